import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../helpers/cli.js';

/**
 * What `npm run build` compiles is the product's whole import graph (static and dynamic
 * imports alike): the files of tsconfig.build.json and everything they reach. Test doubles
 * (testing/, the SPDK simulator), tests and benchmarks must not be among them, or they ship
 * in dist/ and the image.
 */
function productFiles(): string[] {
  const configPath = path.join(REPO_ROOT, 'tsconfig.build.json');
  const read = ts.readConfigFile(configPath, (f) => ts.sys.readFile(f));
  if (read.error) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, REPO_ROOT, undefined, configPath);
  const program = ts.createProgram({ rootNames: parsed.fileNames, options: parsed.options });
  return program
    .getSourceFiles()
    .map((f) => path.relative(REPO_ROOT, f.fileName))
    .filter((f) => !f.startsWith('node_modules' + path.sep) && !f.startsWith('..'));
}

describe('the product build', () => {
  it('reaches nothing under testing/, test/ or bench/', () => {
    const files = productFiles();
    expect(files).toContain(path.join('src', 'cli', 'main.ts'));
    expect(files.filter((f) => /^(testing|test|bench)\//.test(f))).toEqual([]);
  }, 60_000);
});
