#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
// CommonJS (see bin/package.json); why this shebang and this loader: bin/load.js.
require('./load.js')('composefs-info');
