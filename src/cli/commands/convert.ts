// Filled in by the component that owns the "convert" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk convert: not implemented yet\n');
  return 2;
}
