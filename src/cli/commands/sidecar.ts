// Filled in by the component that owns the "sidecar" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk sidecar: not implemented yet\n');
  return 2;
}
