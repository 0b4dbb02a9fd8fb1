#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
import { main } from '../dist/src/cli/main.js';
main('composefs-info', process.argv.slice(2));
