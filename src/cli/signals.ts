/**
 * Resolves with the first SIGTERM or SIGINT the process receives (kubelet stops pods with
 * SIGTERM; SIGINT is Ctrl-C). Both listeners are removed then, so a second signal gets Node's
 * default handling: a stuck shutdown can still be interrupted.
 */
export function stopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      resolve(signal);
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
}
