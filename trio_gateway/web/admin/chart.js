// A small line chart of rates over time on a <canvas>, drawn by hand: no library, redrawn
// whole at every sample (a few hundred points at most). Colours come from the page's CSS
// custom properties, so the stylesheet alone decides how it looks.

export class RateChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{name: string, colour: string}[]} series  `colour` names a CSS custom property
   * @param {number} seconds  how much history is shown
   */
  constructor(canvas, series, seconds) {
    this.canvas = canvas;
    this.series = series;
    this.seconds = seconds;
    this.samples = []; // {time: ms, values: {name: number}}
  }

  add(time, values) {
    this.samples.push({ time, values });
    while (this.samples.length && this.samples[0].time < time - this.seconds * 1000) {
      this.samples.shift();
    }
    this.draw();
  }

  clear() {
    this.samples = [];
    this.draw();
  }

  draw() {
    const { canvas } = this;
    // Draw at the screen's resolution: the canvas keeps its CSS size, its buffer follows it.
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    const style = getComputedStyle(canvas);
    const colour = (name) => style.getPropertyValue(name).trim();

    const left = 48;
    const bottom = height - 20;
    const top = 8;
    const now = this.samples.length ? this.samples[this.samples.length - 1].time : 0;
    const peak = Math.max(
      1,
      ...this.samples.flatMap((sample) => this.series.map((s) => sample.values[s.name])),
    );
    const max = niceCeiling(peak);
    const x = (time) => left + ((time - (now - this.seconds * 1000)) / (this.seconds * 1000)) * (width - left);
    const y = (value) => bottom - (value / max) * (bottom - top);

    ctx.font = `12px ${style.fontFamily}`;
    ctx.fillStyle = colour("--muted");
    ctx.strokeStyle = colour("--grid");
    ctx.lineWidth = 1;
    for (const fraction of [0, 0.5, 1]) {
      const value = max * fraction;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y(value)) + 0.5);
      ctx.lineTo(width, Math.round(y(value)) + 0.5);
      ctx.stroke();
      ctx.fillText(formatRate(value), 4, y(value) + 4);
    }
    ctx.fillText(`-${this.seconds}s`, left, height - 4);
    ctx.fillText("now", width - 26, height - 4);

    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    for (const series of this.series) {
      ctx.strokeStyle = colour(series.colour);
      ctx.beginPath();
      this.samples.forEach((sample, index) => {
        const point = [x(sample.time), y(sample.values[series.name])];
        if (index === 0) ctx.moveTo(...point);
        else ctx.lineTo(...point);
      });
      ctx.stroke();
    }
  }
}

// 1, 2 or 5 times a power of ten, at least `value`: round numbers on the axis.
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * power).find((bound) => bound >= value);
}

export function formatRate(value) {
  return value >= 100 ? Math.round(value).toString() : value.toFixed(1);
}
