import { ValidationError } from '../api/errors.js';

/**
 * The domain XML or the VMI's volumes ask for something the converter cannot express for
 * libvirt. A ValidationError, so the CLI reports it as invalid input and the sidecar as
 * INVALID_ARGUMENT; each problem names the field or element and the rule.
 */
export class ConvertError extends ValidationError {
  override readonly name: string = 'ConvertError';
}
