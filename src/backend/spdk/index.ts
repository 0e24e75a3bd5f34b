export { SpdkBackend, SpdkBackendConfigSchema, createSpdkBackend } from './backend.js';
export { toBackendError } from './errors.js';
export type { SpdkBackendOptions, SpdkBackendConfig, BaseBdevSpec } from './backend.js';
export * from './naming.js';
export { buildObservedState, planCloneSize } from './observe.js';
