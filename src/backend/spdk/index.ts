export { SpdkBackend, SpdkBackendConfigSchema, createSpdkBackend, toBackendError } from './backend.js';
export type { SpdkBackendOptions, SpdkBackendConfig, BaseBdevSpec } from './backend.js';
export * from './naming.js';
export { buildObservedState, planCloneSize } from './observe.js';
