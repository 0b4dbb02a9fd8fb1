/**
 * One line of status on a terminal, redrawn in place: what the scan's and the
 * pull's progress displays share. The text comes from a function asked at
 * each tick (ten a second) and whenever `draw()` is called; the line is cut
 * to the terminal's width and erased by `end()`.
 */
export class StatusLine {
  private timer: NodeJS.Timeout | null = null;
  private shown = false;

  constructor(
    private readonly text: () => string,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  /** Start redrawing ten times a second (the timer never keeps the process alive). */
  begin(): void {
    this.timer = setInterval(() => this.draw(), 100);
    this.timer.unref();
  }

  draw(): void {
    const cols = this.out.columns || 80;
    this.out.write(`\r\x1b[K${this.text().slice(0, cols - 1)}`);
    this.shown = true;
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.shown) this.out.write('\r\x1b[K');
    this.shown = false;
  }
}
