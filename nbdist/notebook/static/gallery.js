// nbdist gallery view (anywidget ESM). The Python side (gallery_widget.py) owns all logic and text;
// this file only draws: it builds the grid once and then patches single tiles as their models change.

const REF = "IPY_MODEL_";

function bytesOf(value) {
  if (!value) return null;
  if (value instanceof ArrayBuffer) return value.byteLength ? new Uint8Array(value) : null;
  if (ArrayBuffer.isView(value)) return value.byteLength ? value : null;
  return null;
}

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

async function resolve(model, ref) {
  if (ref && typeof ref === "object" && typeof ref.get === "function") return ref;
  if (typeof ref === "string" && ref.startsWith(REF)) {
    return model.widget_manager.get_model(ref.slice(REF.length));
  }
  throw new Error(`nbdist: unexpected tile reference ${String(ref)}`);
}

async function render({ model, el }) {
  const cleanup = [];
  const root = node("div", "nbdist-gallery");
  el.appendChild(root);

  // -- header -----------------------------------------------------------------------------------
  const head = node("div", "nbdist-head");
  const title = node("div", "nbdist-title");
  const stats = node("div", "nbdist-stats");
  const bar = node("div", "nbdist-bar");
  const fill = node("div", "nbdist-bar-fill");
  bar.appendChild(fill);
  const workers = node("div", "nbdist-workers");
  const stop = node("button", "nbdist-stop", "Stop");
  stop.title = "Stop this run: finished images are kept, the workers stay warm";
  stop.addEventListener("click", () => {
    stop.disabled = true;
    stop.textContent = "Stopping…";
    model.send({ type: "stop" });
  });
  head.append(title, stop, stats, bar, workers);

  function drawHeader() {
    const h = model.get("header") || {};
    title.textContent = h.title || "";
    stats.textContent = h.stats || "";
    fill.style.width = `${Math.round(1000 * (h.fraction || 0)) / 10}%`;
    workers.replaceChildren(...(h.workers || []).map((line) => node("div", "nbdist-worker", line)));
    root.dataset.finished = h.finished ? "true" : "false";
    stop.hidden = !model.get("stoppable") || Boolean(h.finished);
  }

  // -- viewer (one image, large) ----------------------------------------------------------------
  const viewer = node("div", "nbdist-viewer");
  viewer.hidden = true;
  viewer.tabIndex = 0;
  const vbar = node("div", "nbdist-viewer-bar");
  const vtitle = node("span", "nbdist-viewer-title");
  const prev = node("button", "nbdist-prev", "‹");
  const next = node("button", "nbdist-next", "›");
  const up = node("button", "nbdist-up", "↑");
  const down = node("button", "nbdist-down", "↓");
  const download = node("a", "nbdist-download", "Download PNG");
  const close = node("button", "nbdist-close", "✕");
  close.title = "close (Esc)";
  up.title = "same column, previous row (↑)";
  down.title = "same column, next row (↓)";
  vbar.append(vtitle, prev, next, up, down, download, close);
  const vimg = node("img", "nbdist-viewer-img");
  const vnote = node("div", "nbdist-viewer-note");
  // Acting on the image: its cell to the clipboard; variations and a refine, run below as panels.
  const actions = node("div", "nbdist-viewer-actions");
  const copy = node("button", "nbdist-copy", "Copy cell");
  copy.title = "copy the %%distgen cell that makes this image again, alone";
  const vary = node("button", "nbdist-vary", "More like this");
  vary.title = "8 variations of this image (its noise blended with other seeds' at strength 0.2), shown below";
  const rprompt = node("input", "nbdist-refine-prompt");
  rprompt.type = "text";
  rprompt.title = "the prompt Refine uses (this image's own by default)";
  const rstrength = node("input", "nbdist-refine-strength");
  Object.assign(rstrength, { type: "number", min: "0.05", max: "1", step: "0.05", value: "0.4" });
  rstrength.title = "how much of the image Refine redraws (0-1)";
  const refine = node("button", "nbdist-refine", "Refine");
  refine.title = "image-to-image from this image with the prompt and strength on the left, shown below";
  actions.append(copy, vary, rprompt, rstrength, refine);
  const vaction = node("div", "nbdist-viewer-action-note");
  const vcell = node("pre", "nbdist-viewer-cell");
  vcell.hidden = true;
  viewer.append(vbar, vimg, vnote, actions, vaction, vcell);

  const grid = node("div", "nbdist-grid");
  const panels = node("div", "nbdist-panels"); // galleries of the runs started from this viewer
  root.append(head, viewer, grid, panels);

  function drawAspect() {
    grid.style.setProperty("--nbdist-aspect", String(model.get("aspect") || 1));
  }

  // -- tiles ------------------------------------------------------------------------------------
  let tiles = [];
  const full = new Map(); // index -> {url, name, width, height} or {error}
  let shown = -1; // position in `tiles` of the image in the viewer
  let waitTimer = null;

  function drawTile(tile) {
    const m = tile.model;
    const status = m.get("status");
    tile.fig.dataset.status = status;
    tile.status.textContent = m.get("label");
    tile.status.title = status === "failed" ? m.get("error") : "";
    tile.prompt.textContent = m.get("caption"); // "" in a sweep whose row label is the prompt
    tile.prompt.title = m.get("prompt");
    tile.prompt.hidden = !m.get("caption");
    tile.meta.textContent = m.get("meta");
    tile.meta.title = m.get("meta");
    tile.progress.style.width = status === "running" ? `${Math.round(100 * (m.get("fraction") || 0))}%` : "0";
    drawPicture(tile);
    if (shown >= 0 && tiles[shown] === tile) drawViewer();
  }

  // -- virtualized pictures ---------------------------------------------------------------------
  // Only tiles in view (or near it) hold a decoded image; off-screen ones keep at most the JPEG bytes.
  // Thumbnails past the widget state's cap arrive as "thumbs" messages (never saved in the notebook);
  // a tile in view that lacks one asks the kernel for it (answered once the kernel is free).
  const tileOf = new Map(); // image index -> tile
  const wanted = new Set();
  let askTimer = null;

  function thumbnailOf(tile) {
    return bytesOf(tile.model.get("thumbnail")) || tile.extra;
  }

  function drawPicture(tile) {
    const inViewer = shown >= 0 && tiles[shown] === tile;
    const final = thumbnailOf(tile);
    const picture = final || bytesOf(tile.model.get("preview")); // the image forming, until the finished one arrives
    const bytes = tile.visible || inViewer ? picture : null;
    if (bytes && bytes !== tile.bytes) {
      if (tile.url) URL.revokeObjectURL(tile.url);
      tile.bytes = bytes;
      tile.url = URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
      tile.img.src = tile.url;
    } else if (!bytes && tile.url) {
      URL.revokeObjectURL(tile.url);
      tile.url = null;
      tile.bytes = null;
      tile.img.removeAttribute("src");
    }
    tile.img.hidden = !tile.url;
    tile.fig.dataset.picture = !tile.url ? "none" : final ? "final" : "preview";
    if ((tile.visible || inViewer) && !final && tile.model.get("status") === "done") ask(tile.model.get("index"));
  }

  function ask(index) {
    wanted.add(index);
    if (askTimer === null) {
      askTimer = setTimeout(() => {
        askTimer = null;
        model.send({ type: "thumbs", indices: [...wanted].slice(0, 200) });
        wanted.clear();
      }, 100);
    }
  }

  function gotThumbnails(msg, buffers) {
    (msg.indices || []).forEach((index, i) => {
      const tile = tileOf.get(index);
      if (!tile || !buffers || !buffers[i]) return;
      tile.extra = bytesOf(buffers[i]);
      drawPicture(tile);
      if (shown >= 0 && tiles[shown] === tile) drawViewer();
    });
  }

  const sight = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const tile = entry.target.nbdistTile;
        if (!tile || tile.visible === entry.isIntersecting) continue;
        tile.visible = entry.isIntersecting;
        drawPicture(tile);
      }
    },
    { rootMargin: "400px" },
  );

  async function buildTiles() {
    const models = await Promise.all((model.get("tiles") || []).map((ref) => resolve(model, ref)));
    for (const tile of tiles) tile.dispose();
    tiles = models.map((m, pos) => {
      const fig = node("figure", "nbdist-tile");
      fig.dataset.index = String(m.get("index"));
      const pic = node("div", "nbdist-pic");
      const img = node("img");
      img.alt = m.get("prompt");
      const progress = node("div", "nbdist-tile-progress");
      pic.append(img, progress);
      const status = node("div", "nbdist-status");
      const cap = node("figcaption");
      const prompt = node("div", "nbdist-prompt");
      const meta = node("div", "nbdist-meta");
      cap.append(prompt, meta);
      fig.append(pic, status, cap);
      const tile = { model: m, fig, img, progress, status, prompt, meta, url: null, bytes: null };
      tile.visible = false;
      tile.extra = null;
      tileOf.set(m.get("index"), tile);
      fig.nbdistTile = tile;
      sight.observe(fig);
      const onChange = () => drawTile(tile);
      m.on("change", onChange);
      fig.addEventListener("click", () => open(pos));
      tile.dispose = () => {
        m.off("change", onChange);
        sight.unobserve(fig);
        tileOf.delete(m.get("index"));
        if (tile.url) URL.revokeObjectURL(tile.url);
      };
      drawTile(tile);
      return tile;
    });
    layOut();
  }

  // -- layout and navigation --------------------------------------------------------------------
  // `rows` lists the rows the viewer walks: positions in `tiles`, -1 for an empty cell. Without a
  // sweep there is one row, every tile in prompt order; with one, a row per labelled row of each grid.
  let rows = [];
  let where = new Map(); // position in `tiles` -> [row, column]

  function place(pos, r, c) {
    where.set(pos, [r, c]);
    return tiles[pos].fig;
  }

  function sweepSection(g, byIndex) {
    const section = node("section", "nbdist-sweep");
    if (g.heading) section.appendChild(node("div", "nbdist-sweep-heading", g.heading));
    const table = node("div", "nbdist-sweep-grid");
    table.style.gridTemplateColumns = `minmax(7em, 16em) repeat(${g.columns.length}, minmax(120px, 200px))`;
    table.appendChild(node("div", "nbdist-corner"));
    for (const text of g.columns) table.appendChild(node("div", "nbdist-col-label", text));
    g.cells.forEach((cells, r) => {
      const label = node("div", "nbdist-row-label", (g.rows || [])[r] || "");
      label.title = label.textContent;
      table.appendChild(label);
      const row = cells.map((index) => (byIndex.has(index) ? byIndex.get(index) : -1));
      row.forEach((pos, c) => table.appendChild(pos < 0 ? node("div", "nbdist-empty") : place(pos, rows.length, c)));
      rows.push(row);
    });
    section.appendChild(table);
    return section;
  }

  function layOut() {
    const sweep = model.get("grids") || [];
    rows = [];
    where = new Map();
    if (!sweep.length) {
      grid.className = "nbdist-grid";
      grid.replaceChildren(...tiles.map((_, pos) => place(pos, 0, pos)));
      rows = [tiles.map((_, pos) => pos)];
      return;
    }
    const byIndex = new Map(tiles.map((tile, pos) => [tile.model.get("index"), pos]));
    grid.className = "nbdist-sweeps";
    grid.replaceChildren(...sweep.map((g) => sweepSection(g, byIndex)));
  }

  function neighbour(pos, dr, dc) {
    const at = where.get(pos);
    if (!at) return -1;
    let [r, c] = at;
    for (;;) {
      r += dr;
      c += dc;
      if (r < 0 || r >= rows.length || c < 0 || c >= rows[r].length) return -1;
      if (rows[r][c] >= 0) return rows[r][c];
    }
  }

  function drawViewer() {
    const tile = tiles[shown];
    if (!tile) return;
    const m = tile.model;
    const index = m.get("index");
    // Opened before its image was done (queued, forming): ask for the full size the moment it is, whatever
    // redraws the viewer then (its tile's change, or a thumbnail that came as a message past the cap).
    if (m.get("status") === "done") request(index);
    const got = full.get(index);
    vtitle.textContent = `${m.get("prompt")} · ${m.get("meta")}`;
    vimg.alt = m.get("prompt");
    vtitle.title = m.get("prompt");
    const sweep = rows.length > 1;
    prev.title = sweep ? "previous in this row (←)" : "previous image (←)";
    next.title = sweep ? "next in this row (→)" : "next image (→)";
    prev.disabled = neighbour(shown, 0, -1) < 0;
    next.disabled = neighbour(shown, 0, 1) < 0;
    up.hidden = down.hidden = !sweep;
    up.disabled = neighbour(shown, -1, 0) < 0;
    down.disabled = neighbour(shown, 1, 0) < 0;
    const done = m.get("status") === "done";
    actions.hidden = !done;
    vary.hidden = refine.hidden = rprompt.hidden = rstrength.hidden = !model.get("actionable");
    copy.disabled = !m.get("cell");
    if (got && got.url) {
      vimg.src = got.url;
      vimg.hidden = false;
      download.href = got.url;
      download.download = got.name;
      download.classList.remove("nbdist-disabled");
      vnote.textContent = `${got.width}×${got.height}, full size`;
    } else {
      vimg.hidden = !tile.url;
      if (tile.url) vimg.src = tile.url;
      download.removeAttribute("href");
      download.classList.add("nbdist-disabled");
      if (m.get("status") === "failed") vnote.textContent = m.get("label");
      else if (!tile.url) vnote.textContent = "not generated yet";
      else if (m.get("status") !== "done") vnote.textContent = `forming: ${m.get("label")} (live preview)`;
      else if (got && got.error) vnote.textContent = got.error;
      else if (got && got.waiting) {
        vnote.textContent =
          "preview; the full-size image arrives when the cell has finished (the kernel is busy running it)";
      } else vnote.textContent = "preview; loading the full-size image…";
    }
  }

  function request(index) {
    if (full.has(index)) return;
    full.set(index, { pending: true });
    model.send({ type: "full", index });
    clearTimeout(waitTimer);
    waitTimer = setTimeout(() => {
      const got = full.get(index);
      if (got && got.pending) {
        got.waiting = true;
        drawViewer();
      }
    }, 800);
  }

  function open(pos) {
    if (pos < 0 || pos >= tiles.length) return;
    if (pos !== shown) {
      rprompt.value = tiles[pos].model.get("prompt");
      vaction.textContent = "";
      vcell.hidden = true;
    }
    shown = pos;
    viewer.hidden = false;
    root.dataset.viewing = String(tiles[pos].model.get("index"));
    const tile = tiles[pos];
    drawPicture(tile); // the viewer's tile holds its thumbnail even when scrolled out of view
    drawViewer(); // and asks for the full size if the image is done
    viewer.focus({ preventScroll: true });
    viewer.scrollIntoView({ block: "nearest" });
  }

  function hide() {
    shown = -1;
    viewer.hidden = true;
    delete root.dataset.viewing;
  }

  const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
  const move = ([dr, dc]) => open(neighbour(shown, dr, dc));
  prev.addEventListener("click", () => move(moves.ArrowLeft));
  next.addEventListener("click", () => move(moves.ArrowRight));
  up.addEventListener("click", () => move(moves.ArrowUp));
  down.addEventListener("click", () => move(moves.ArrowDown));
  close.addEventListener("click", hide);
  vimg.addEventListener("click", hide);
  viewer.addEventListener("keydown", (event) => {
    const vertical = event.key === "ArrowUp" || event.key === "ArrowDown";
    if (event.key === "Escape") hide();
    else if (event.key in moves && !(vertical && rows.length <= 1)) move(moves[event.key]);
    else return;
    event.preventDefault();
    event.stopPropagation();
  });

  async function copyCell() {
    const text = tiles[shown] ? tiles[shown].model.get("cell") : "";
    vcell.textContent = text;
    vcell.hidden = false;
    try {
      await navigator.clipboard.writeText(text);
      vaction.textContent = "cell copied: paste it into a new cell";
    } catch (err) {
      const range = document.createRange(); // no clipboard permission: select it for Ctrl+C instead
      range.selectNodeContents(vcell);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      vaction.textContent = "the cell is selected below: press Ctrl+C (the browser refused the clipboard)";
    }
  }

  function act(action) {
    const tile = tiles[shown];
    if (!tile) return;
    const request = { type: "action", action, index: tile.model.get("index") };
    if (action === "refine") Object.assign(request, { prompt: rprompt.value, strength: Number(rstrength.value) });
    model.send(request);
    vaction.textContent = `${action === "vary" ? "More like this" : "Refine"}: sent; it starts below once the kernel is free`;
  }

  copy.addEventListener("click", copyCell);
  vary.addEventListener("click", () => act("vary"));
  refine.addEventListener("click", () => act("refine"));
  for (const input of [rprompt, rstrength]) input.addEventListener("keydown", (event) => event.stopPropagation());

  const panelViews = new Map(); // child model id -> its cleanup
  async function drawPanels() {
    for (const ref of model.get("panels") || []) {
      const child = await resolve(model, ref);
      const id = child.model_id || child.cid;
      if (panelViews.has(id)) continue;
      panelViews.set(id, null);
      const el = node("div", "nbdist-panel");
      panels.appendChild(el);
      panelViews.set(id, await render({ model: child, el }));
    }
  }

  const onCustom = (msg, buffers) => {
    if (msg && msg.type === "action") {
      vaction.textContent = msg.ok ? "started: its gallery is below" : `not started: ${msg.error}`;
      return;
    }
    if (msg && msg.type === "thumbs") return gotThumbnails(msg, buffers);
    if (!msg || msg.type !== "full") return;
    const bytes = buffers && buffers.length ? bytesOf(buffers[0]) : null;
    if (msg.ok && bytes) {
      const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
      full.set(msg.index, { url, name: msg.name, width: msg.width, height: msg.height });
    } else {
      full.set(msg.index, { error: msg.error || "the full-size image is not available" });
    }
    if (shown >= 0 && tiles[shown] && tiles[shown].model.get("index") === msg.index) drawViewer();
  };

  model.on("change:header", drawHeader);
  model.on("change:stoppable", drawHeader);
  model.on("change:aspect", drawAspect);
  model.on("change:tiles", buildTiles);
  model.on("change:grids", layOut);
  model.on("msg:custom", onCustom);
  model.on("change:panels", drawPanels);
  model.on("change:actionable", () => shown >= 0 && drawViewer());
  drawHeader();
  drawAspect();
  await buildTiles();
  await drawPanels();

  return () => {
    clearTimeout(waitTimer);
    for (const cleanup of panelViews.values()) if (typeof cleanup === "function") cleanup();
    clearTimeout(askTimer);
    sight.disconnect();
    for (const tile of tiles) tile.dispose();
    for (const got of full.values()) if (got.url) URL.revokeObjectURL(got.url);
  };
}

export default { render };
