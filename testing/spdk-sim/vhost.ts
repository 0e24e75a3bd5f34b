import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { invalidParams } from './errors.js';
import type { SessionInfo } from './model.js';
import type { Logger } from '../../src/log.js';

interface Listener {
  server: net.Server;
  sessions: Map<net.Socket, SessionInfo>;
  nextId: number;
}

/**
 * The vhost-user side of controllers: one real unix socket per controller. The simulator does
 * not speak vhost-user; an accepted connection is held open and counted as a session, which
 * is what `vhost_get_controllers` reports and what a client (QEMU) can observe.
 */
export class VhostSockets {
  private readonly listeners = new Map<string, Listener>();
  private nextVid = 0;

  constructor(private readonly logger: Logger) {}

  /** Binds `socketPath`, replacing a stale socket file as SPDK does; -32602 EIO otherwise. */
  async bind(ctrlr: string, socketPath: string): Promise<void> {
    const log = this.logger.child({ ctrlr, socket: socketPath });
    // Another controller's live socket (two names equal in their first 107 bytes): EIO.
    if (this.listeners.has(socketPath)) {
      log.error({ event: 'vhost_socket_failed' }, 'socket path in use by another controller');
      throw invalidParams('EIO');
    }
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(socketPath);
    } catch {
      stat = undefined;
    }
    if (stat) {
      if (!stat.isSocket()) {
        log.error({ event: 'vhost_socket_failed' }, 'cannot create a domain socket: the file exists and is not a socket');
        throw invalidParams('EIO');
      }
      fs.rmSync(socketPath, { force: true });
    }
    const l: Listener = { server: net.createServer(), sessions: new Map(), nextId: 0 };
    l.server.on('connection', (sock) => {
      const id = l.nextId++;
      l.sessions.set(sock, { vid: this.nextVid++, id, name: `${ctrlr}s${id}`, started: false, max_queues: 0, inflight_task_cnt: 0 });
      log.info({ event: 'vhost_session_open', session: id }, 'vhost-user connection accepted');
      const drop = (): void => {
        if (l.sessions.delete(sock)) log.info({ event: 'vhost_session_closed', session: id }, 'vhost-user connection closed');
      };
      sock.on('close', drop);
      sock.on('error', drop);
      // Whatever a client sends is ignored: there is no vhost-user protocol here.
      sock.on('data', () => undefined);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        l.server.once('error', reject);
        l.server.listen(socketPath, () => {
          l.server.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const reason = err.code === 'ENOENT' ? `directory ${path.dirname(socketPath)} does not exist` : err.message;
      log.error({ event: 'vhost_socket_failed', err: err.code }, `could not register controller with vhost library: ${reason}`);
      throw invalidParams('EIO');
    }
    this.listeners.set(socketPath, l);
  }

  /** Closes the controller's socket, drops its sessions and removes the socket file. */
  async close(socketPath: string): Promise<void> {
    const l = this.listeners.get(socketPath);
    if (!l) return;
    this.listeners.delete(socketPath);
    for (const sock of l.sessions.keys()) sock.destroy();
    l.sessions.clear();
    await new Promise<void>((resolve) => l.server.close(() => resolve()));
    fs.rmSync(socketPath, { force: true });
  }

  sessions(socketPath: string): SessionInfo[] {
    const l = this.listeners.get(socketPath);
    return l ? [...l.sessions.values()].map((s) => ({ ...s })) : [];
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.listeners.keys()].map((p) => this.close(p)));
  }
}
