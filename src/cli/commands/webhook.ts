// Filled in by the component that owns the "webhook" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk webhook: not implemented yet\n');
  return 2;
}
