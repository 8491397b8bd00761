/**
 * Jest runs the pure modules (format, countdown, warnings, cost, stopreason)
 * through ts-jest in plain Node: they import nothing from JupyterLab, so no
 * DOM environment and no ES-module transform of JupyterLab packages is needed.
 */
module.exports = {
  testEnvironment: 'node',
  testRegex: 'src/__tests__/.*\\.spec\\.ts$',
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  }
};
