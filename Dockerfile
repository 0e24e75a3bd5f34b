# The kubevirt-spdk image: agent, device plugin, webhook and hook sidecar in one binary.
# spdk_tgt runs from its own image (a parameter of the DaemonSet): SPDK is not built here.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src src
COPY webhooks webhooks
COPY deviceplugin deviceplugin
COPY proto proto
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM node:20-bookworm-slim
# qemu-utils: qcow2 -> raw conversion on image import; qemu-storage-daemon for the qsd backend.
RUN apt-get update && apt-get install -y --no-install-recommends qemu-utils qemu-system-common \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kubevirt-spdk
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
COPY --from=build /src/proto proto
COPY package.json ./
# Every component passes its subcommand (the webhook injects the hook sidecar with `sidecar`);
# a bare `--version v1alphaN`, as older webhooks injected, also runs the sidecar.
ENTRYPOINT ["node", "/opt/kubevirt-spdk/dist/src/cli/main.js"]
