// Filled in by the component that owns the "status" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk status: not implemented yet\n');
  return 2;
}
