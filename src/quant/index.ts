/**
 * The packer: group-wise 2-, 4- and 8-bit quantisation with f16 scales and zero points, standalone
 * ({@link createReferencePacker}, {@link createNativePacker}) and as a cache's storage format.
 * @module
 */
export {
  PACK_FORMATS, PACK_LIMIT, type PackFormat, type GroupParameters, dequantiseValue, f16Ceil, f16Floor, formatBits,
  groupParameters, parsePackFormat, quantiseValue, readCode, roundHalfEven, unpackable, writeCode,
} from './format.js';
export { type PackOptions, type PackedTensor, type Packer, checkPacked, codeBytes, packedBytes } from './packer.js';
export { createReferencePacker } from './reference.js';
export { createNativePacker } from './native.js';
export {
  type DenseStorageOptions, type PackedStorage, type PackedStorageOptions, type StorageFormat, type StorageOptions, type StoreLayout,
  isPacked, kvBytesPerHead, packedSizes, resolveStorage, storeBytesPerSequence,
} from './storage.js';
