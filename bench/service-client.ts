/**
 * One mount, timed inside a client process once it has started and loaded
 * what it needs (bench/service.ts runs one per measurement): through the
 * mount service (as nobody, callVarlink), the kernel mount (as root,
 * mountImage in-process) or the FUSE mount (as root, mountFuse, whose
 * server is a process of its own). The mount is left in place; prints one
 * JSON line: the milliseconds around the call, and the service's explain lines.
 */
import { openSync, constants as fsc } from 'node:fs';

export type ClientRequest =
  | { how: 'service'; socket: string; image: string; basedir: string; mountpoint: string }
  | { how: 'service-unmount'; socket: string; mountpoint: string }
  | { how: 'kernel'; image: string; basedir: string; mountpoint: string }
  | { how: 'fuse'; image: string; basedir: string; mountpoint: string };

const O_PATH = 0o10000000;

async function run(req: ClientRequest): Promise<Record<string, unknown>> {
  switch (req.how) {
    case 'service': {
      const { callVarlink } = await import('../src/service/varlink.js');
      const { closeFds } = await import('../src/sys/socket.js');
      const t0 = performance.now();
      const fds = [openSync(req.image, fsc.O_RDONLY), openSync(req.basedir, O_PATH | fsc.O_DIRECTORY), openSync(req.mountpoint, O_PATH | fsc.O_NOFOLLOW)];
      try {
        const r = await callVarlink(req.socket, 'io.composefs.Mount.Mount', { image: 0, basedirs: [1], mountpoint: 2 }, fds, { timeoutMs: 120_000 });
        const ms = performance.now() - t0;
        closeFds(r.fds);
        return { ms, explain: r.parameters.explain };
      } finally {
        closeFds(fds);
      }
    }
    case 'service-unmount': {
      const { callVarlink } = await import('../src/service/varlink.js');
      const { closeFds } = await import('../src/sys/socket.js');
      const root = openSync(req.mountpoint, O_PATH | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
      try {
        await callVarlink(req.socket, 'io.composefs.Mount.Unmount', { mountpoint: 0 }, [root], { timeoutMs: 30_000 });
        return {};
      } finally {
        closeFds([root]);
      }
    }
    case 'kernel': {
      const { mountImage } = await import('../src/mount/mount.js');
      const t0 = performance.now();
      await mountImage(req.image, req.mountpoint, { basedir: [req.basedir], fuse: false });
      return { ms: performance.now() - t0 };
    }
    case 'fuse': {
      const { mountFuse } = await import('../src/fuse/mount.js');
      const t0 = performance.now();
      await mountFuse(req.image, req.mountpoint, { basedir: [req.basedir], via: 'direct' });
      return { ms: performance.now() - t0 };
    }
  }
}

run(JSON.parse(process.argv[2]) as ClientRequest).then(
  (r) => {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
