// Flat config (ESLint 10). The boundary rules keep drachtio-srf owned by one module and
// better-sqlite3 by one folder (lib/store/), so their loosely typed APIs never leak into the rest
// of the code. Later blocks override earlier ones for the files they match.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const DRACHTIO = { name: 'drachtio-srf', message: 'only lib/sip/drachtio.ts imports drachtio-srf (typed boundary)' };
const SQLITE = { name: 'better-sqlite3', message: 'only lib/store/ imports better-sqlite3' };
// `paths` matches the package name only; `patterns` also catches its files (drachtio-srf/lib/…).
const restrict = (...paths) => ({ 'no-restricted-imports': ['error', { paths, patterns: paths.map(({ name, message }) => ({ group: [`${name}/*`], message })) }] });

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      ...restrict(DRACHTIO, SQLITE),
    },
  },
  // the drachtio boundary, and test/bench tools that talk the drachtio wire protocol themselves
  { files: ['lib/sip/drachtio.ts', 'test/support/**/*.ts', 'bench/**/*.ts'], rules: restrict(SQLITE) },
  { files: ['lib/store/**/*.ts'], rules: restrict(DRACHTIO) },
);
