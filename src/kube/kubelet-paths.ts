/**
 * Where the kubelet's sockets are by default. Kept apart from the clients so that option
 * parsing (the agent's CLI, also in standalone mode) does not load gRPC for a default value.
 */
export const DEFAULT_POD_RESOURCES_SOCKET = '/var/lib/kubelet/pod-resources/kubelet.sock';
