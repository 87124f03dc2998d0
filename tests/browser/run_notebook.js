// Open one notebook in a running JupyterLab with a real (headless) Chromium, run all its cells,
// optionally drive one widget, and write what the page showed as JSON. tests/test_browser.py
// starts JupyterLab, calls this script and makes the assertions; this file only observes.
//
//   node run_notebook.js '{"base": "http://127.0.0.1:PORT", "token": "...", "notebook": "01_x.ipynb",
//                          "chromium": "/usr/bin/chromium", "screenshot": "build/screenshots/01_x.png",
//                          "report": "/tmp/report.json", "timeout_s": 600, "render_wait_s": 60,
//                          "interaction": {...}}'
//
// interaction (optional), one of
//   {"kind": "slider", "label": "head"}: press ArrowRight on the slider whose label is `label` and
//        wait for the image in the same interactive output to change;
//   {"kind": "text", "value": "...", "expect": "..."}: type `value` into the text box, press Enter and
//        wait for a table containing `expect` in the widget output.
// glyph_chars (optional): a character class (JavaScript, u flag); every output table cell or text
//   output holding such characters is reported under "glyphs" with the fonts Chromium drew its text
//   with (DevTools CSS.getPlatformFontsForNode) and the characters exactly as wide as one that no font
//   has (drawn as the missing-glyph box); <screenshot>_chinese.png shows the first of them.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage'];

const opts = JSON.parse(process.argv[2]);
const started = Date.now();
const seconds = () => Math.round((Date.now() - started) / 100) / 10;
const report = {
  notebook: opts.notebook, timings: {}, console_errors: [], page_errors: [], failed_requests: [],
  steps: [],
};

function step(name) {
  report.timings[name] = seconds();
  report.steps.push(name);
  process.stderr.write(`[browser ${seconds()} s] ${name}\n`);
}

function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

// Cells off screen are laid out lazily (JupyterLab's default content-visibility windowing), so the
// first scroll lands near the element; scroll again once the cells around it have their real size.
async function scrollTo(page, locator) {
  for (let i = 0; i < 3; i += 1) {
    await locator.scrollIntoViewIfNeeded();
    await page.waitForTimeout(400);
  }
}

// Everything the notebook model and the DOM say after the run (evaluated in the page). A rendered
// widget view is a `.jupyter-widgets` element directly inside an output (the output element carries no
// mime type attribute for widgets).
function inspectPage([name, widgetMime]) {
  const panel = window.coursePanel(name);
  const cells = panel.content.widgets;
  const code = cells.filter((c) => c.model.type === 'code');
  const modelOutputs = code.map((c) => c.model.outputs.toJSON());
  const widgetOutputs = modelOutputs.flat().filter((o) => o.data && o.data[widgetMime]).length;
  const modelErrors = [];
  code.forEach((c, i) => c.model.outputs.toJSON().forEach((o) => {
    if (o.output_type === 'error') modelErrors.push({ code_cell: i, ename: o.ename, evalue: String(o.evalue).slice(0, 300) });
  }));
  const stderr = [...document.querySelectorAll('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map((n) => n.innerText);
  const imgs = [...document.querySelectorAll('.jp-OutputArea-output img')];
  const bodyText = document.body.innerText;
  const count = (sel) => document.querySelectorAll(sel).length;
  return {
    code_cells: code.length,
    not_executed: code.map((c, i) => (c.model.executionCount == null ? i : null)).filter((i) => i !== null),
    model_errors: modelErrors,
    stderr_tracebacks: stderr.filter((t) => t.includes('Traceback')).map((t) => t.slice(0, 1500)),
    stderr_other: stderr.filter((t) => !t.includes('Traceback')).map((t) => t.slice(0, 300)),
    images: imgs.length,
    images_decoded: imgs.filter((i) => i.complete && i.naturalWidth > 0).length,
    widget_outputs_in_model: widgetOutputs,
    widget_outputs_rendered: count('.jp-OutputArea-output > .jupyter-widgets'),
    // a view whose model or module failed to load still renders, as this error widget
    widget_error_views: count('.jupyter-widgets-error-widget'),
    widgets: {
      'jupyter-widgets': count('.jupyter-widgets'),
      'widget-dropdown': count('.widget-dropdown'),
      'widget-slider': count('.widget-slider'),
      'widget-text': count('.widget-text'),
      'widget-output': count('.widget-output'),
      'widget-interact': count('.widget-interact'),
    },
    error_displaying_widget: (document.body.textContent.match(/Error displaying widget/g) || []).length,
    loading_widget_placeholders: (bodyText.match(/Loading widget\.\.\./g) || []).length,
    kernel_status: panel.sessionContext.session && panel.sessionContext.session.kernel
      ? panel.sessionContext.session.kernel.status : 'none',
  };
}

// Output cells (table cells, text outputs) with characters of `chars`: their text, how many such
// characters, and which of them are as wide as U+10FFFD (private use, in no font) in the cell's font.
// Each is marked with data-glyph-check=<index> so DevTools can find it.
function measureGlyphs(chars) {
  const pattern = new RegExp(chars, 'gu');
  const ctx = document.createElement('canvas').getContext('2d');
  const cells = [];
  // textContent, not innerText: cells skipped by content-visibility have no layout, hence no innerText
  const selector = '.jp-OutputArea-output td, .jp-OutputArea-output th, .jp-OutputArea-output pre';
  document.querySelectorAll(selector).forEach((el) => {
    const found = el.textContent.match(pattern) || [];
    if (!found.length) return;
    const style = getComputedStyle(el);
    ctx.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const box = ctx.measureText('\u{10FFFD}').width;
    const boxLike = [...new Set(found)].filter((c) => Math.abs(ctx.measureText(c).width - box) < 0.01);
    el.setAttribute('data-glyph-check', String(cells.length));
    cells.push({ tag: el.tagName.toLowerCase(), text: el.textContent.trim().slice(0, 200), checked_chars: found.length,
      box_like: boxLike, font: ctx.font, box_width: box, fonts: [] });
  });
  return cells;
}

// The fonts Chromium drew each marked cell's text with. Off-screen cells may not be laid out
// (JupyterLab's content-visibility windowing), so each is scrolled into view first.
async function platformFonts(page, cells) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('DOM.enable');
  await cdp.send('CSS.enable');
  const { root } = await cdp.send('DOM.getDocument', { depth: 1 });
  for (let i = 0; i < cells.length; i += 1) {
    await scrollTo(page, page.locator(`[data-glyph-check="${i}"]`));
    const { nodeId } = await cdp.send('DOM.querySelector', { nodeId: root.nodeId, selector: `[data-glyph-check="${i}"]` });
    cells[i].fonts = (await cdp.send('CSS.getPlatformFontsForNode', { nodeId })).fonts;
  }
  await cdp.detach();
}

async function main() {
  const browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args: FLAGS });
  step('browser_started');
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.on('console', (msg) => {
      if (msg.type() === 'error') report.console_errors.push({ text: msg.text().slice(0, 500), url: msg.location().url || '' });
    });
    page.on('pageerror', (err) => report.page_errors.push(String(err && err.stack || err).slice(0, 1000)));
    page.on('requestfailed', (req) => report.failed_requests.push(`${req.url()} ${req.failure() ? req.failure().errorText : ''}`));

    // The notebook's panel, by path (window.jupyterapp exists because the server runs with
    // --LabApp.expose_app_in_browser=True).
    await page.addInitScript(() => {
      window.coursePanel = (name) => {
        if (!window.jupyterapp) return null;
        for (const w of window.jupyterapp.shell.widgets('main')) if (w.context && w.context.path === name) return w;
        return null;
      };
    });
    // ?reset: a fresh workspace, so tabs of an earlier notebook are not restored beside this one
    const url = `${opts.base}/lab/tree/${encodeURIComponent(opts.notebook)}?reset&token=${opts.token}`;
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120000 });
    const nb = opts.notebook;
    await page.waitForFunction((name) => window.coursePanel(name) && window.coursePanel(name).sessionContext,
      nb, { timeout: 180000, polling: 250 });
    step('notebook_open');
    await page.evaluate(async (name) => {
      const panel = window.coursePanel(name);
      await panel.context.ready;
      await panel.sessionContext.ready;
    }, nb);
    await page.waitForFunction((name) => {
      const s = window.coursePanel(name).sessionContext.session;
      return s && s.kernel && s.kernel.status === 'idle';
    }, nb, { timeout: 180000, polling: 250 });
    step('kernel_idle');

    // The same command as Run > Run All Cells, on this notebook; it resolves when the last cell has
    // finished, or to false as soon as a cell raises (later cells are then not run).
    const ok = await withTimeout(
      page.evaluate((name) => {
        window.jupyterapp.shell.activateById(window.coursePanel(name).id);
        return window.jupyterapp.commands.execute('notebook:run-all-cells');
      }, nb),
      opts.timeout_s * 1000, 'Run All Cells');
    report.run_all_ok = ok === true;
    step('run_all_done');

    // Widget views and images render after their outputs arrive: wait until every widget output
    // of the model has a rendered view and every output image is decoded (or render_wait_s, default
    // 60 s, pass).
    await page.waitForFunction(([name, mime]) => {
      const panel = window.coursePanel(name);
      const expected = panel.content.widgets.filter((c) => c.model.type === 'code')
        .flatMap((c) => c.model.outputs.toJSON()).filter((o) => o.data && o.data[mime]).length;
      const rendered = document.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets').length;
      const imgs = [...document.querySelectorAll('.jp-OutputArea-output img')];
      return rendered >= expected && imgs.every((i) => i.complete && i.naturalWidth > 0);
    }, [nb, WIDGET_MIME], { timeout: (opts.render_wait_s || 60) * 1000, polling: 500 }).catch(() => { report.render_wait_timed_out = true; });
    step('rendered');

    report.page = await page.evaluate(inspectPage, [nb, WIDGET_MIME]);

    const shots = path.dirname(opts.screenshot);
    fs.mkdirSync(shots, { recursive: true });
    const stem = path.basename(opts.screenshot, '.png');
    const firstImage = page.locator('.jp-OutputArea-output img').first();
    if (await firstImage.count()) {
      await scrollTo(page, firstImage);
      await page.screenshot({ path: path.join(shots, `${stem}_first_plot.png`) });
    }

    const it = opts.interaction;
    if (it) {
      report.interaction = { kind: it.kind, ok: false };
      try {
        if (it.kind === 'slider') {
          const slider = page.locator('.widget-slider', { hasText: it.label }).last();
          const area = page.locator('.widget-interact', { has: slider }).last();
          const img = area.locator('.widget-output img').first();
          await scrollTo(page, slider);
          const before = await img.getAttribute('src');
          await slider.locator('.noUi-handle').first().focus();
          await page.keyboard.press('ArrowRight');
          await page.waitForFunction(([el, src]) => {
            const now = el.querySelector('.widget-output img');
            return now && now.getAttribute('src') !== src && now.naturalWidth > 0;
          }, [await area.elementHandle(), before], { timeout: 60000, polling: 250 });
          report.interaction.readout = (await slider.locator('.widget-readout').innerText()).trim();
          report.interaction.ok = true;
          await scrollTo(page, area);
        } else if (it.kind === 'text') {
          const box = page.locator('.widget-text input').last();
          await scrollTo(page, box);
          await box.fill(it.value);
          await box.press('Enter');
          const table = page.locator('.widget-output table', { hasText: it.expect }).last();
          await table.waitFor({ timeout: 60000 });
          report.interaction.table = (await table.innerText()).slice(0, 500);
          report.interaction.ok = true;
          await scrollTo(page, box);
        }
      } catch (err) {
        report.interaction.error = String(err.message || err).split('\n')[0].slice(0, 300);
      }
      step('interaction_done');
    } else {
      const widget = page.locator('.jp-OutputArea-output .jupyter-widgets').last();
      if (await widget.count()) await scrollTo(page, widget);
    }
    await page.screenshot({ path: opts.screenshot });

    if (opts.glyph_chars) {
      const cells = await page.evaluate(measureGlyphs, opts.glyph_chars);
      report.glyphs = { chars: opts.glyph_chars, cells: cells.slice(0, 12) };  // the first dozen say enough
      await platformFonts(page, report.glyphs.cells);
      if (cells.length) {
        // the table cell with the most such characters (notebook 04: a Chinese review), rather than
        // single characters in a vocabulary table or printed token lists
        const score = (c) => c.checked_chars + (c.tag === 'td' ? 1000 : 0);
        const best = cells.reduce((b, c, i) => (score(c) > score(cells[b]) ? i : b), 0);
        await scrollTo(page, page.locator(`[data-glyph-check="${best}"]`));
        await page.screenshot({ path: path.join(shots, `${stem}_chinese.png`) });
      }
      step('glyphs_checked');
    }
    report.screenshots = fs.readdirSync(shots).filter((f) => f.startsWith(stem)).map((f) => path.join(shots, f));
    step('screenshots_saved');

    // Leave the kernel shut down rather than orphaned when the server stops.
    await page.evaluate((name) => window.coursePanel(name).sessionContext.shutdown(), nb).catch(() => {});
  } catch (err) {
    report.fatal = String(err && err.message || err).slice(0, 2000);
  } finally {
    report.timings.total = seconds();
    fs.writeFileSync(opts.report, JSON.stringify(report, null, 2));
    await browser.close();
  }
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack || err}\n`);
  process.exit(1);
});
