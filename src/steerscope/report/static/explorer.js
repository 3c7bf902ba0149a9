/* steerscope circuit explorer: reads the JSON in #explorer-data and draws, with d3,
   the circuit graph of each patched vector (size slider along the faithfulness curve),
   node details (score, svv tokens, attention pattern, top edges), the per-position view
   of one example, the vectors side by side, and the faithfulness / sparsity curves. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  var root = d3.select("#explorer");
  var tip = d3.select("body").append("div").attr("class", "ex-tip").style("display", "none");
  var G = DATA.graph, METHODS = DATA.methods;
  var state = {method: METHODS[0], step: {}, node: null};
  METHODS.forEach(function (m) { state.step[m] = DATA.vectors[m].default_step; });
  var TYPE_DASH = {q: null, k: "6,3", v: "2,3", mlp: null, logits: null};
  var TYPE_COLOR_NAME = {q: "Q", k: "K", v: "V", mlp: "MLP", logits: "logits"};

  function fmt(x, d) { return x === null || x === undefined ? "–" : (+x).toFixed(d === undefined ? 3 : d); }
  function showTip(ev, html) {
    tip.style("display", "block").html(html)
      .style("left", (ev.pageX + 12) + "px").style("top", (ev.pageY + 12) + "px");
  }
  function hideTip() { tip.style("display", "none"); }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c]; }); }
  function tokHtml(t) { return "<code>" + esc(JSON.stringify(t).slice(1, -1)) + "</code>"; }
  function nodeLabel(n) {
    if (n.kind === "attn") return "L" + n.layer + "H" + n.index;
    if (n.kind === "mlp") return "MLP" + n.layer;
    return n.id;
  }
  function edgeKey(view, e) { return view.nodes[e[0]].id + "->" + e[5]; }
  function shown(view, step) { return view.edges.filter(function (e) { return e[4] <= step; }); }

  /* --- layout: x by layer, heads stacked, MLP below them --- */
  function layout(width, height) {
    var L0 = G.layer, L1 = G.n_layers, H = G.n_heads;
    var x = d3.scaleLinear().domain([L0 - 1, L1]).range([30, width - 30]);
    var y = d3.scaleLinear().domain([0, H + 1]).range([18, height - 18]);
    return function (n) {
      if (n.kind === "steer" || n.kind === "logits") return [x(n.layer), y((H + 1) / 2)];
      if (n.kind === "mlp") return [x(n.layer) + 10, y(H + 1)];
      return [x(n.layer), y(n.index)];
    };
  }

  function colorOf(v, max) {
    if (v === null || v === undefined) return "#999";
    return d3.interpolateRdBu(0.5 + 0.5 * Math.max(-1, Math.min(1, v / (max || 1))));
  }

  /* Draw one circuit into svg; opts: {width, height, highlight: Set of edge keys, click} */
  function drawGraph(svg, m, step, opts) {
    var view = DATA.vectors[m];
    var edges = shown(view, step);
    var width = opts.width, height = opts.height, pos = layout(width, height);
    svg.attr("viewBox", "0 0 " + width + " " + height).attr("width", width).attr("height", height);
    svg.selectAll("*").remove();
    var maxAbs = d3.max(view.edges, function (e) { return Math.abs(e[3] || 0); }) || 1;
    var nodeMax = d3.max(view.nodes, function (n) { return Math.abs(n.score || 0); }) || 1;
    var visible = new Set([view.nodes.length - 1]);
    edges.forEach(function (e) { visible.add(e[0]); e[1].forEach(function (t) { visible.add(t); }); });
    var lines = [];
    edges.forEach(function (e) {
      e[1].forEach(function (t) { lines.push({e: e, t: t}); });
    });
    svg.append("g").attr("class", "ex-edges").selectAll("path").data(lines).join("path")
      .attr("class", "ex-edge")
      .attr("d", function (d) {
        var a = pos(view.nodes[d.e[0]]), b = pos(view.nodes[d.t]);
        var mx = (a[0] + b[0]) / 2;
        return "M" + a[0] + "," + a[1] + " C" + mx + "," + a[1] + " " + mx + "," + b[1] + " " + b[0] + "," + b[1];
      })
      .attr("stroke", function (d) {
        if (opts.highlight) return opts.highlight.has(edgeKey(view, d.e)) ? "#6a3d9a" : "#bbb";
        return colorOf(d.e[3], maxAbs);
      })
      .attr("stroke-width", function (d) { return 0.6 + 4 * Math.sqrt(Math.abs(d.e[3] || 0) / maxAbs); })
      .attr("stroke-dasharray", function (d) { return TYPE_DASH[d.e[2]]; })
      .attr("fill", "none").attr("opacity", 0.75)
      .on("mousemove", function (ev, d) {
        showTip(ev, "<b>" + esc(edgeKey(view, d.e)) + "</b><br>type " + TYPE_COLOR_NAME[d.e[2]] +
          "<br>score " + fmt(d.e[3], 4));
      })
      .on("mouseout", hideTip);
    var nodes = view.nodes.filter(function (n, i) { return visible.has(i); });
    var g = svg.append("g").attr("class", "ex-nodes").selectAll("g").data(nodes).join("g")
      .attr("class", function (n) { return "ex-node ex-" + n.kind + (state.node === n.id && opts.click ? " ex-selected" : ""); })
      .attr("data-node", function (n) { return n.id; })
      .attr("transform", function (n) { var p = pos(n); return "translate(" + p[0] + "," + p[1] + ")"; })
      .on("mousemove", function (ev, n) {
        showTip(ev, "<b>" + esc(nodeLabel(n)) + "</b> (" + esc(n.id) + ")<br>node score " + fmt(n.score, 4));
      })
      .on("mouseout", hideTip);
    if (opts.click) g.style("cursor", "pointer").on("click", function (ev, n) { opts.click(n); });
    g.append("path").attr("d", function (n) {
      var shape = n.kind === "attn" ? d3.symbolCircle : n.kind === "mlp" ? d3.symbolSquare : d3.symbolDiamond;
      return d3.symbol(shape, n.kind === "attn" ? 70 : 110)();
    }).attr("fill", function (n) { return n.kind === "logits" ? "#444" : colorOf(n.score, nodeMax); })
      .attr("stroke", "#333").attr("stroke-width", 0.8);
    if (opts.labels) {
      g.append("text").attr("dy", -7).attr("text-anchor", "middle").attr("class", "ex-nlabel")
        .text(function (n) { return n.kind === "attn" ? "H" + n.index : nodeLabel(n); });
      var layers = d3.range(G.layer, G.n_layers);
      svg.append("g").selectAll("text").data(layers).join("text").attr("class", "ex-axis")
        .attr("x", function (L) { return pos({kind: "attn", layer: L, index: 0})[0]; })
        .attr("y", height - 2).attr("text-anchor", "middle").text(function (L) { return "L" + L; });
    }
    return edges.length;
  }

  /* --- the main view: method tabs, slider, graph, details --- */
  var main = root.append("div").attr("class", "ex-main");
  var bar = main.append("div").attr("class", "ex-bar");
  bar.append("span").text("vector: ");
  var tabs = bar.append("span").selectAll("button").data(METHODS).join("button")
    .attr("class", "ex-tab").attr("data-method", function (m) { return m; }).text(function (m) { return m; })
    .on("click", function (ev, m) { state.method = m; state.node = null; render(); });
  bar.append("label").attr("for", "ex-size").text(" circuit size ");
  var slider = bar.append("input").attr("type", "range").attr("id", "ex-size").attr("min", 0).attr("step", 1)
    .on("input", function () { state.step[state.method] = +this.value; render(); });
  var countEl = bar.append("span").attr("id", "ex-edge-count");
  var faithEl = bar.append("span").attr("id", "ex-faith").attr("class", "ex-meta");
  var row = main.append("div").attr("class", "ex-row");
  var svg = row.append("svg").attr("id", "ex-graph");
  var panel = row.append("div").attr("id", "ex-panel").attr("class", "ex-panel");
  main.append("div").attr("class", "ex-legend").html(
    "edges: colour = sign of the EAP-IG score (blue +, red −), width = |score|; " +
    "solid = into Q / MLP / logits, dashed = K, dotted = V. Nodes: ● head, ■ MLP, ◆ steering input / logits, " +
    "coloured by node score. Hover for values, click a node for details.");

  function render() {
    var m = state.method, view = DATA.vectors[m], step = state.step[m];
    tabs.classed("ex-active", function (x) { return x === m; });
    slider.attr("max", view.steps.length - 1).property("value", step);
    var n = drawGraph(svg, m, step, {width: 760, height: 360, labels: true, click: function (node) {
      state.node = node.id; render();
    }});
    var s = view.steps[step];
    countEl.text(" " + n + " edges");
    faithEl.text(" of " + view.total_edges + " · faithfulness " + fmt(s.faithfulness) +
      (s.min ? " · minimum faithful circuit" : ""));
    renderPanel(view);
    renderPositions(view);
  }

  function edgeTable(title, rows) {
    if (!rows || !rows.length) return "";
    return "<h5>" + title + "</h5><table class='ex-table'>" + rows.map(function (r) {
      return "<tr><td class='l'>" + esc(r[0]) + "</td><td>" + fmt(r[1], 4) + "</td></tr>";
    }).join("") + "</table>";
  }

  function renderPanel(view) {
    panel.html("");
    var node = view.nodes.find(function (n) { return n.id === state.node; });
    if (!node) {
      panel.append("p").attr("class", "ex-meta").text("Click a head, an MLP, the steering input or the logits.");
      return;
    }
    panel.append("h4").text(nodeLabel(node) + (node.kind === "attn" ? " (" + node.id + ")" : ""));
    panel.append("p").html("node score <b>" + fmt(node.score, 4) + "</b>" +
      (node.kind !== "logits" ? " · in the circuit from " + view.steps[Math.min(node.entry, view.steps.length - 1)].size + " edges" : ""));
    var svv = view.svv && view.svv.heads[node.id];
    if (node.kind === "attn" && svv) {
      panel.append("h5").text("svv tokens (logit lens" + (svv.flipped ? ", sign-flipped" : "") + ")");
      panel.append("div").attr("id", "ex-svv").attr("class", "ex-tokens")
        .html(svv.tokens.map(tokHtml).join(" "));
    } else if (node.kind === "attn") {
      panel.append("p").attr("class", "ex-meta").text("no svv tokens (this run has no svv stage)");
    }
    if (view.svv && view.svv.sum && (node.kind === "attn" || node.kind === "steer")) {
      panel.append("h5").text("sum of all heads' svv");
      panel.append("div").attr("class", "ex-tokens ex-svv-sum").html(view.svv.sum.tokens.map(tokHtml).join(" "));
    }
    var ex = view.example;
    if (node.kind === "attn" && ex && ex.attention.heads[node.id]) drawPattern(ex, node.id);
    panel.node().insertAdjacentHTML("beforeend", edgeTable("top incoming edges", node.top_in) +
      edgeTable("top outgoing edges", node.top_out));
  }

  function drawPattern(ex, head) {
    var A = ex.attention, bytes = atob(A.heads[head]), R = A.rows.length, K = A.keys;
    var cell = Math.max(2, Math.min(8, Math.floor(300 / K)));
    panel.append("h5").text("attention pattern, steered run (" + ex.dataset + ")");
    var canvas = panel.append("canvas").attr("class", "ex-pattern").attr("width", K * cell).attr("height", R * cell);
    var ctx = canvas.node().getContext("2d");
    for (var r = 0; r < R; r++) {
      for (var k = 0; k < K; k++) {
        var v = bytes.charCodeAt(r * K + k) / 255;
        if (v > 0) { ctx.fillStyle = d3.interpolateBlues(v); ctx.fillRect(k * cell, r * cell, cell, cell); }
      }
    }
    ctx.strokeStyle = "#d62728";
    ctx.beginPath(); ctx.moveTo(ex.prompt_len * cell, 0); ctx.lineTo(ex.prompt_len * cell, R * cell); ctx.stroke();
    canvas.on("mousemove", function (ev) {
      var r = Math.floor(ev.offsetY / cell), k = Math.floor(ev.offsetX / cell);
      if (r >= R || k >= K) return hideTip();
      showTip(ev, "query " + tokHtml(ex.tokens[A.rows[r]]) + " (pos " + A.rows[r] + ")<br>key " +
        tokHtml(ex.tokens[k]) + " (pos " + k + ")<br>weight " + fmt(bytes.charCodeAt(r * K + k) / 255, 2));
    }).on("mouseout", hideTip);
    panel.append("p").attr("class", "ex-meta").text("rows: response positions; columns: keys; red line: end of the prompt");
  }

  /* --- per-position view --- */
  var posBox = root.append("div").attr("class", "ex-positions");
  function renderPositions(view) {
    posBox.html("");
    var ex = view.example;
    posBox.append("h3").text("Per-position metric (" + state.method + ")");
    if (!ex) { posBox.append("p").attr("class", "notrun").text("no example view (built without the model)"); return; }
    posBox.append("p").attr("class", "ex-meta").text("One teacher-forced " + ex.dataset + " example, α = " + ex.alpha +
      ". Each response token is coloured by the " + ex.metric + " effect of steering at the position predicting it " +
      "(m(steered) − m(unsteered)); struck-through tokens are masked out of the metric. Hover for the greedy tokens.");
    var effect = ex.m_steered.map(function (v, i) { return v - ex.m_base[i]; });
    var max = d3.max(effect, function (v) { return Math.abs(v); }) || 1;
    var at = {};
    ex.positions.forEach(function (p, i) { at[p + 1] = i; });
    var toks = ex.tokens.map(function (t, j) { return {t: t, j: j, i: at[j]}; });
    posBox.append("div").attr("class", "ex-tokens ex-seq").selectAll("span").data(toks).join("span")
      .attr("class", function (d) { return d.j < ex.prompt_len ? "ex-prompt" : (ex.masked[d.i] ? "ex-tok ex-masked" : "ex-tok"); })
      .style("background", function (d) { return d.i === undefined || ex.masked[d.i] ? null : colorOf(effect[d.i], max); })
      .text(function (d) { return d.t; })
      .on("mousemove", function (ev, d) {
        var i = d.i;
        if (i === undefined) return hideTip();
        showTip(ev, "steered greedy " + tokHtml(ex.steered_tokens[i]) + "<br>unsteered greedy " +
          tokHtml(ex.base_tokens[i]) + "<br>m steered " + fmt(ex.m_steered[i]) + " · m unsteered " +
          fmt(ex.m_base[i]) + (ex.masked[i] ? "<br><i>masked</i>" : ""));
      })
      .on("mouseout", hideTip);
  }

  /* --- compare vectors: minimum circuits side by side, shared edges highlighted --- */
  if (METHODS.length > 1) {
    var cmp = root.append("div").attr("class", "ex-compare");
    cmp.append("h3").text("Compare vectors");
    cmp.append("p").attr("class", "ex-meta").text("Each vector's circuit at its slider position above " +
      "(default: the minimum faithful circuit); purple edges are also in another vector's circuit.");
    var cells = cmp.append("div").attr("class", "ex-row").selectAll("div").data(METHODS).join("div").attr("class", "ex-cell");
    cells.append("div").attr("class", "ex-cell-title");
    cells.append("svg").attr("class", "ex-small");
    var renderCompare = function () {
      var sets = {};
      METHODS.forEach(function (m) {
        var v = DATA.vectors[m];
        sets[m] = new Set(shown(v, state.step[m]).map(function (e) { return edgeKey(v, e); }));
      });
      cells.each(function (m) {
        var others = new Set();
        METHODS.forEach(function (o) { if (o !== m) sets[o].forEach(function (k) { others.add(k); }); });
        var shared = new Set(Array.from(sets[m]).filter(function (k) { return others.has(k); }));
        var n = drawGraph(d3.select(this).select("svg"), m, state.step[m], {width: 360, height: 200, highlight: shared});
        d3.select(this).select(".ex-cell-title").text(m + ": " + n + " edges, " + shared.size + " shared");
      });
    };
    var baseRender = render;
    render = function () { baseRender(); renderCompare(); };
  }

  /* --- interactive curves --- */
  function lineChart(title, series, opts) {
    var w = 420, h = 240, mg = {l: 42, r: 10, t: 22, b: 34};
    var box = curves.append("div").attr("class", "ex-cell");
    var s = box.append("svg").attr("width", w).attr("height", h).attr("class", "ex-chart");
    s.append("text").attr("x", w / 2).attr("y", 14).attr("text-anchor", "middle").attr("class", "ex-title").text(title);
    var pts = [].concat.apply([], series.map(function (d) { return d.points; }));
    if (!pts.length) return;
    var x = (opts.log ? d3.scaleLog() : d3.scaleLinear()).domain(opts.xdomain || d3.extent(pts, function (p) { return p[0]; })).range([mg.l, w - mg.r]);
    var y = d3.scaleLinear().domain(opts.ydomain).range([h - mg.b, mg.t]);
    s.append("g").attr("transform", "translate(0," + (h - mg.b) + ")").call(d3.axisBottom(x).ticks(5, opts.log ? "~s" : null));
    s.append("g").attr("transform", "translate(" + mg.l + ",0)").call(d3.axisLeft(y).ticks(5));
    s.append("text").attr("x", w / 2).attr("y", h - 3).attr("text-anchor", "middle").attr("class", "ex-axis").text(opts.xlabel);
    if (opts.hline !== undefined) {
      s.append("line").attr("x1", mg.l).attr("x2", w - mg.r).attr("y1", y(opts.hline)).attr("y2", y(opts.hline))
        .attr("stroke", "#888").attr("stroke-dasharray", "4,3");
    }
    var color = d3.scaleOrdinal(d3.schemeCategory10);
    series.forEach(function (d, i) {
      s.append("path").datum(d.points).attr("fill", "none").attr("stroke", color(i)).attr("stroke-width", 1.5)
        .attr("stroke-dasharray", d.dash || null)
        .attr("d", d3.line().x(function (p) { return x(p[0]); }).y(function (p) { return y(p[1]); }));
      s.append("g").selectAll("circle").data(d.points).join("circle").attr("class", "ex-point")
        .attr("cx", function (p) { return x(p[0]); }).attr("cy", function (p) { return y(p[1]); }).attr("r", 3.5)
        .attr("fill", color(i))
        .on("mousemove", function (ev, p) { showTip(ev, "<b>" + esc(d.name) + "</b><br>" + opts.xlabel + " " + fmt(p[0], opts.xdigits) + "<br>" + opts.ylabel + " " + fmt(p[1])); })
        .on("mouseout", hideTip);
    });
    box.append("div").attr("class", "ex-meta").html(series.map(function (d, i) {
      return "<span style='color:" + color(i) + "'>■</span> " + esc(d.name);
    }).join(" &nbsp; "));
  }
  var curves = root.append("div").attr("class", "ex-row ex-curves");
  var faithSeries = METHODS.map(function (m) {
    return {name: m, points: DATA.vectors[m].steps.filter(function (s) { return s.faithfulness !== null && s.size > 0; })
      .map(function (s) { return [s.size, s.faithfulness]; })};
  }).filter(function (d) { return d.points.length; });
  if (faithSeries.length) {
    lineChart("Faithfulness along the slider", faithSeries, {log: true, ydomain: [Math.min(0, d3.min(faithSeries, function (d) { return d3.min(d.points, function (p) { return p[1]; }); })), 1.05],
      xlabel: "circuit size (edges)", ylabel: "faithfulness", xdigits: 0, hline: DATA.threshold});
  }
  if (DATA.sparsify) {
    Object.keys(DATA.sparsify).filter(function (m) { return m !== "iou"; }).forEach(function (m) {
      var series = [];
      Object.keys(DATA.sparsify[m]).forEach(function (rule) {
        var pts = DATA.sparsify[m][rule].slice().sort(function (a, b) { return a.sparsity - b.sparsity; });
        ["present", "absent"].forEach(function (side) {
          var key = side + "_behaviour_rate";
          var p = pts.filter(function (q) { return q[key] !== null && q[key] !== undefined; })
            .map(function (q) { return [q.sparsity, q[key]]; });
          if (p.length) series.push({name: rule + " " + side, points: p, dash: side === "absent" ? "4,3" : null});
        });
      });
      lineChart("Sparsification: " + m, series, {xdomain: [0, 1], ydomain: [0, 1.02], xlabel: "sparsity", ylabel: "behaviour rate", xdigits: 3});
    });
  }
  render();
})();
