#!/usr/bin/env node
import { main } from '../dist/src/cli/main.js';
main('composefs-dump', process.argv.slice(2));
