export * from './client.js';
export * from './api.js';
export * from './errors.js';
export * from './framing.js';
export * from './schemas.js';
