// Filled in by the component that owns the "spdk-sim" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk spdk-sim: not implemented yet\n');
  return 2;
}
