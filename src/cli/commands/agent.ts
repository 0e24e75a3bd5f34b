// Filled in by the component that owns the "agent" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk agent: not implemented yet\n');
  return 2;
}
