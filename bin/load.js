// The CLI from its bundle (dist/src/cli/bundle.cjs, made by scripts/bundle.mjs),
// or from the compiled modules when only `tsc` has run.
module.exports = (prog) => {
  const args = process.argv.slice(2);
  let cli;
  try {
    cli = require('../dist/src/cli/bundle.cjs');
  } catch (err) {
    if (err.code !== 'MODULE_NOT_FOUND' || !String(err.message).includes('bundle.cjs')) throw err;
    import('../dist/src/cli/main.js').then((m) => m.main(prog, args));
    return;
  }
  cli.main(prog, args);
};
