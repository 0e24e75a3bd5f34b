import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // Integration tests start real processes (QSD, libvirtd, QEMU); keep them from
    // competing for the 2 cores of a CI machine.
    maxConcurrency: 4,
    pool: 'forks',
  },
});
