/**
 * A one-line progress display on a terminal: entries scanned, files and
 * bytes digested, rate, and time left once the scan knows the totals.
 * Redrawn at most ten times a second; erased when done.
 */
import { humanBytes } from '../units.js';
import { StatusLine } from '../output/status-line.js';

export interface ProgressState {
  entries: number;
  scanDone: boolean;
  filesTotal: number;
  filesDone: number;
  bytesTotal: number;
  bytesDone: number;
}


function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}` : `${m}:${String(s % 60).padStart(2, '0')}`;
}

export class Progress {
  private readonly start = Date.now();
  private readonly status: StatusLine;

  constructor(
    private readonly state: () => ProgressState,
    out: NodeJS.WriteStream = process.stderr,
  ) {
    this.status = new StatusLine(() => this.line(), out);
  }

  begin(): void {
    this.status.begin();
  }

  /** The line as it would be drawn now (exported for tests). */
  line(): string {
    const s = this.state();
    const secs = (Date.now() - this.start) / 1000;
    const rate = secs > 0 ? s.bytesDone / secs : 0;
    const files = s.scanDone ? `${s.filesDone}/${s.filesTotal} files` : `${s.filesDone} files (scanning: ${s.entries} entries)`;
    const bytes = s.scanDone ? `${humanBytes(s.bytesDone)}/${humanBytes(s.bytesTotal)}` : humanBytes(s.bytesDone);
    let eta = '';
    if (s.scanDone && rate > 0 && s.bytesTotal > s.bytesDone) eta = `, ${clock((s.bytesTotal - s.bytesDone) / rate)} left`;
    return `${files}, ${bytes}, ${humanBytes(rate)}/s${eta}`;
  }

  end(): void {
    this.status.end();
  }
}
