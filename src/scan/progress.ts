/**
 * A one-line progress display on a terminal: entries scanned, files and
 * bytes digested, rate, and time left once the scan knows the totals.
 * Redrawn at most ten times a second; erased when done.
 */
import { humanBytes } from '../units.js';

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
  private timer: NodeJS.Timeout | null = null;
  private readonly start = Date.now();
  private shown = false;

  constructor(
    private readonly state: () => ProgressState,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  begin(): void {
    this.timer = setInterval(() => this.draw(), 100);
    this.timer.unref();
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

  private draw(): void {
    const cols = this.out.columns || 80;
    let text = this.line();
    if (text.length > cols - 1) text = text.slice(0, cols - 1);
    this.out.write(`\r\x1b[K${text}`);
    this.shown = true;
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.shown) this.out.write('\r\x1b[K');
    this.shown = false;
  }
}
