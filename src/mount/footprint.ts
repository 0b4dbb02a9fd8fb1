/**
 * What a mount added to the system, observed rather than assumed: new
 * mountinfo lines, bound loop devices, /dev nodes, temporary directories.
 * For `npm start` and anyone who wants to show the footprint of a mount.
 *
 *   const marks = markSystem();
 *   const r = await mountComposefs(image, dir, { basedir: [objects] });
 *   console.log(describeFootprint(footprintSince(marks)));
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { listLoops } from '../sys/loop.js';
import { TEMP_PREFIX } from './temp.js';

export interface SystemMarks {
  mountinfo: string[];
  loops: string[];
  dev: string[];
  tempDirs: string[];
}

export interface Footprint {
  mountinfoLines: string[];
  loopDevices: string[];
  devNodes: string[];
  tempDirs: string[];
}

function tempDirs(): string[] {
  const out: string[] = [];
  for (const base of new Set(['/run', tmpdir(), '/tmp'])) {
    if (!existsSync(base)) continue;
    for (const n of readdirSync(base)) if (n.startsWith(TEMP_PREFIX)) out.push(`${base}/${n}`);
  }
  return out;
}

export function markSystem(): SystemMarks {
  return {
    // Without the mount ids, which the kernel reuses.
    mountinfo: readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(' ').slice(2).join(' ')),
    loops: listLoops().map((l) => `/dev/${l.name} <- ${l.backingFile}`),
    dev: readdirSync('/dev'),
    tempDirs: tempDirs(),
  };
}

export function footprintSince(before: SystemMarks, now = markSystem()): Footprint {
  const added = (a: string[], b: string[]) => {
    const s = new Set(a);
    return b.filter((x) => !s.has(x));
  };
  return {
    mountinfoLines: added(before.mountinfo, now.mountinfo),
    loopDevices: added(before.loops, now.loops),
    devNodes: added(before.dev, now.dev),
    tempDirs: added(before.tempDirs, now.tempDirs),
  };
}

export function describeFootprint(f: Footprint): string {
  const lines = [`mountinfo: ${f.mountinfoLines.length} new line${f.mountinfoLines.length === 1 ? '' : 's'}`];
  for (const l of f.mountinfoLines) lines.push(`  ${l}`);
  lines.push(`loop devices: ${f.loopDevices.length ? f.loopDevices.join(', ') : 'none'}`);
  lines.push(`new /dev nodes: ${f.devNodes.length ? f.devNodes.join(', ') : 'none'}`);
  lines.push(`temporary directories: ${f.tempDirs.length ? f.tempDirs.join(', ') : 'none'}`);
  return lines.join('\n');
}
