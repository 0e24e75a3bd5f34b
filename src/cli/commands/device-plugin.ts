// Filled in by the component that owns the "device-plugin" subcommand.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('kubevirt-spdk device-plugin: not implemented yet\n');
  return 2;
}
