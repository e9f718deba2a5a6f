/* The dashboard's few scripts: draw each chart from the JSON block beside its canvas, and
   suggest user and item ids as one types. Chart.js is served from this folder too. */
(function () {
  "use strict";

  function utc(ms, seconds) {
    return new Date(ms).toISOString().slice(0, seconds ? 19 : 16).replace("T", " ");
  }

  function noteOf(context) {
    var raw = context.raw;
    if (raw && typeof raw === "object" && raw.note) {
      return raw.note;
    }
    var notes = context.dataset.note;
    return notes && notes[context.dataIndex] ? notes[context.dataIndex] : "";
  }

  function draw(canvas) {
    var source = document.getElementById(canvas.dataset.chart);
    if (!source || typeof Chart === "undefined") {
      return;
    }
    var config = JSON.parse(source.textContent);
    var options = config.options || (config.options = {});
    var scales = options.scales || {};
    var timeAxis = false;
    Object.keys(scales).forEach(function (name) {
      if (scales[name].recsysTime) {
        timeAxis = true;
        scales[name].ticks = Object.assign({}, scales[name].ticks, {
          // Seconds when the axis spans less than an hour (moves made in one sitting).
          callback: function (value) { return utc(value, this.max - this.min < 3600000); },
          maxTicksLimit: 8
        });
      }
    });
    var plugins = options.plugins || (options.plugins = {});
    plugins.legend = Object.assign({}, plugins.legend, {
      labels: {
        filter: function (item, data) { return !data.datasets[item.datasetIndex].recsysBand; }
      }
    });
    plugins.tooltip = Object.assign({}, plugins.tooltip, {
      filter: function (item) { return !item.dataset.recsysBand; },
      callbacks: {
        title: function (items) {
          if (timeAxis && items.length) {
            return utc(items[0].parsed.x, true) + " UTC";
          }
          return items.length ? items[0].label : "";
        },
        afterLabel: noteOf
      }
    });
    canvas.recsysChart = new Chart(canvas, config);
  }

  function suggest(input, url, describe) {
    var list = document.getElementById(input.getAttribute("list"));
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      var words = input.value.split(",");
      var last = words[words.length - 1].trim();
      if (!last || !list) {
        return;
      }
      timer = setTimeout(function () {
        fetch(url + "?q=" + encodeURIComponent(last), { headers: { Accept: "application/json" } })
          .then(function (response) { return response.ok ? response.json() : []; })
          .then(function (found) {
            var head = words.slice(0, -1).join(",");
            list.replaceChildren.apply(list, found.map(function (entry) {
              var option = document.createElement("option");
              var id = typeof entry === "string" ? entry : entry.id;
              option.value = head ? head + "," + id : id;
              if (describe && entry.title) {
                option.label = entry.title;
              }
              return option;
            }));
          })
          .catch(function () {});
      }, 150);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var canvases = document.querySelectorAll("canvas[data-chart]");
    canvases.forEach(draw);
    document.querySelectorAll("input[data-suggest]").forEach(function (input) {
      suggest(input, input.dataset.suggest, false);
    });
    document.querySelectorAll("input[data-suggest-items]").forEach(function (input) {
      suggest(input, input.dataset.suggestItems, true);
    });
    document.documentElement.dataset.chartsDrawn = String(canvases.length);
  });
})();
