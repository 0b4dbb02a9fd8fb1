#!/usr/bin/env node
import { main } from '../dist/src/cli/main.js';
main('composefs-info', process.argv.slice(2));
