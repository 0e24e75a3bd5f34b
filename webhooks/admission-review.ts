import { z } from 'zod';

/**
 * The parts of `admission.k8s.io/v1` AdmissionReview that the webhook reads and writes.
 * The API server sends more fields (userInfo, options, ...); they pass through unread.
 */
export const ADMISSION_API_VERSION = 'admission.k8s.io/v1';

const GroupVersionKindSchema = z.object({ group: z.string(), version: z.string(), kind: z.string() });

/** A Kubernetes object as JSON: only "it is an object" is checked here. */
const KubeObjectSchema = z.record(z.unknown());

export const AdmissionRequestSchema = z
  .object({
    uid: z.string().min(1, 'must not be empty'),
    kind: GroupVersionKindSchema,
    operation: z.enum(['CREATE', 'UPDATE', 'DELETE', 'CONNECT']),
    name: z.string().optional(),
    namespace: z.string().optional(),
    object: KubeObjectSchema.nullable().optional(),
    oldObject: KubeObjectSchema.nullable().optional(),
    dryRun: z.boolean().optional(),
  })
  .passthrough();
export type AdmissionRequest = z.output<typeof AdmissionRequestSchema>;

export const AdmissionReviewRequestSchema = z
  .object({
    apiVersion: z.literal(ADMISSION_API_VERSION),
    kind: z.literal('AdmissionReview'),
    request: AdmissionRequestSchema,
  })
  .passthrough();

export const AdmissionResponseSchema = z.object({
  uid: z.string(),
  allowed: z.boolean(),
  status: z.object({ code: z.number().int(), message: z.string(), reason: z.string().optional() }).optional(),
  /** base64 of a JSON Patch (RFC 6902) document. */
  patch: z.string().optional(),
  patchType: z.literal('JSONPatch').optional(),
  warnings: z.array(z.string()).optional(),
});
export type AdmissionResponse = z.output<typeof AdmissionResponseSchema>;

export const AdmissionReviewResponseSchema = z.object({
  apiVersion: z.literal(ADMISSION_API_VERSION),
  kind: z.literal('AdmissionReview'),
  response: AdmissionResponseSchema,
});
export type AdmissionReviewResponse = z.output<typeof AdmissionReviewResponseSchema>;

export function reviewResponse(response: AdmissionResponse): AdmissionReviewResponse {
  return { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response };
}
