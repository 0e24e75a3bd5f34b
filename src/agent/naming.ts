/** Moved to the contract (src/contract/layout.ts); re-exported until every caller imports it there. */
export { MAX_DISK_ID_LENGTH, controllerName, diskId, diskKey, goldenImageName, isOurControllerName, isOurDiskId, parseControllerName, socketPathProblem } from '../contract/layout.js';
