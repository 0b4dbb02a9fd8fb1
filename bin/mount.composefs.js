#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
// CommonJS (see bin/package.json): the bundle of the CLI loads without the ES module loader.
require('./load.js')('mount.composefs');
