/** The contract every component shares: the node layout and the disk intent. */
export * from './layout.js';
export * from './intent.js';
export * from './boot-profile.js';
