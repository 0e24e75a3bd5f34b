import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // The product (what tsconfig.build.json builds) never depends on test doubles or tests:
    // testing/ and test/ are not in dist/ (test/unit/build/product-graph.test.ts checks the
    // whole graph, dynamic imports included).
    files: ['src/**/*.ts', 'webhooks/**/*.ts', 'deviceplugin/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        { patterns: [{ group: ['**/testing/**', '**/test/**', '**/bench/**'], message: 'the product must not import test doubles, tests or benchmarks (testing/, test/, bench/)' }] },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
