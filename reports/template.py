"""The HTML report template (Jinja2, rendered with autoescape: every string is escaped).

Kept as Python strings rather than .j2 files so they ship with the package without
package-data configuration: TEMPLATES, by name, for a jinja2.DictLoader. "report" (one candidate) and
"leaderboard" (several) extend "page" and share the macros of "macros". The page is self-contained: inline
CSS, figures as inline SVG or PNG data URIs, one inline script (KPI_TABLE_SCRIPT: sort and filter the KPI table), and a
Content-Security-Policy that forbids loading anything else and runs that script alone, by its hash.
"""

# Sorts the KPI table by a clicked column (by each cell's data-sort number where it has one, else its text) and
# filters it to the blocking and guard KPIs (those that can decide the merge); "#blocking-only" in the address
# starts filtered. Marks the table "ready".
KPI_TABLE_SCRIPT = """
(function () {
  var table = document.getElementById("kpi-table");
  var only = document.getElementById("blocking-only");
  if (!table || !only) return;
  var body = table.tBodies[0];
  function filter() {
    Array.prototype.forEach.call(body.rows, function (row) {
      row.hidden = only.checked && !row.classList.contains("blocking") && !row.classList.contains("guard");
    });
  }
  function key(cell) { return cell.dataset.sort ? parseFloat(cell.dataset.sort) : NaN; }
  only.addEventListener("change", filter);
  only.checked = location.hash === "#blocking-only";
  filter();
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
    header.tabIndex = 0;
    header.title = "sort by this column";
    header.addEventListener("click", function () {
      var ascending = header.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a.cells[column]), y = key(b.cells[column]);
        var order = isNaN(x) || isNaN(y) ? (isNaN(x) - isNaN(y)) ||
          a.cells[column].textContent.localeCompare(b.cells[column].textContent) : x - y;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    });
  });
  table.dataset.interactive = "ready";
})();
"""

# The page around a report: the head (its Content-Security-Policy, the styles) and the one script, at the end.
PAGE_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{{ script_hash }}'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ banner.verdict }} · {{ title }}</title>
<style>
  body { font-family: "DejaVu Sans", "Liberation Sans", Helvetica, Arial, sans-serif; margin: 0; background: #f6f8fa; color: #1f2328; }
  main { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px; }
  h1 { font-size: 22px; margin: 8px 0 4px; }
  h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
  .context { color: #57606a; font-size: 13px; margin-bottom: 12px; overflow-wrap: anywhere; }
  .banner { border-radius: 8px; padding: 14px 20px; color: #fff; margin: 12px 0; }
  .banner h2 { border: 0; margin: 0 0 6px; font-size: 26px; color: #fff; }
  .banner ul { margin: 6px 0 0; padding-left: 20px; }
  .banner li { margin: 3px 0; overflow-wrap: anywhere; }
  .banner.pass { background: #1a7f37; }
  .banner.fail { background: #cf222e; }
  .banner.inconclusive { background: #9a6700; }
  .recommend, .guards { font-weight: bold; margin-top: 8px; }
  .alert { border-left: 5px solid #cf222e; background: #ffebe9; padding: 8px 14px; margin: 10px 0; border-radius: 4px; }
  .alert.warn { border-color: #bf8700; background: #fff8c5; }
  .alert ul { margin: 4px 0; padding-left: 20px; }
  table { border-collapse: collapse; background: #fff; font-size: 13px; margin: 6px 0; }
  th, td { border: 1px solid #d0d7de; padding: 4px 7px; text-align: left; vertical-align: top; }
  th { background: #eaeef2; }
  td:first-child { white-space: nowrap; }
  td.num, .numbers-from-2 td:nth-child(n+3):not(:last-child), .kpi-matrix td:nth-child(n+3) {
    text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
  tr.bad td, tr.all_failed td { background: #ffebe9; }
  tr.has_failures td, tr.warn td { background: #fff8c5; }
  tr.informational td { color: #57606a; }
  tr.reference td { color: #57606a; font-style: italic; }
  tr.total td { font-weight: bold; }
  .scroll { overflow-x: auto; max-width: 100%; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; white-space: nowrap; }
  .badge.improved { background: #1a7f37; }
  .badge.non_inferior { background: #2da44e; }
  .badge.identical { background: #57606a; }
  .badge.regressed { background: #cf222e; }
  .badge.inconclusive { background: #9a6700; }
  .note { color: #57606a; font-size: 12px; margin: 2px 0 10px; }
  pre { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; }
  pre.command { background: #1f2328; color: #f6f8fa; }
  figure { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; margin: 10px 0; display: inline-block; max-width: 100%; }
  figure img { max-width: 100%; image-rendering: pixelated; }
  figcaption { color: #57606a; font-size: 12px; max-width: 700px; }
  details summary { cursor: pointer; color: #0969da; margin: 6px 0; }
  .ok { color: #1a7f37; font-weight: bold; }
  .failed { color: #cf222e; font-weight: bold; }
  .muted { color: #57606a; }
  ul.explanations li { margin: 4px 0; font-size: 13px; }
  nav.toc { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 14px; font-size: 13px; margin: 10px 0; }
  nav.toc ol { margin: 4px 0; padding-left: 20px; columns: 2; }
  nav.toc a, h2 a.anchor { color: #0969da; text-decoration: none; }
  h2 a.anchor { visibility: hidden; margin-left: 6px; }
  h2:hover a.anchor { visibility: visible; }
  #kpi-table th { cursor: pointer; }
  #kpi-table th[aria-sort=ascending]::after { content: " ▲"; }
  #kpi-table th[aria-sort=descending]::after { content: " ▼"; }
  label.filter { font-size: 13px; }
  .kpi-matrix td:first-child, .kpi-matrix th:first-child { position: sticky; left: 0; background: #fff; }
  .kpi-matrix th:first-child { background: #eaeef2; }
  figure svg { max-width: 100%; height: auto; }
</style>
</head>
<body>
<main>
{% block content %}{% endblock %}
</main>
<script>{{ script }}</script>
</body>
</html>
"""

# Shared by the one-candidate report and the leaderboard.
MACROS_TEMPLATE = r"""{%- macro table(t, numeric_from=1, numeric_to=999) -%}
{% if t.rows %}
<div class="scroll"><table>
<thead><tr>{% for column in t.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr class="{{ t.row_classes[loop.index0] if t.row_classes else '' }}">
{%- for cell in row %}<td{% if numeric_from <= loop.index0 < numeric_to %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{% endif %}
{%- endmacro %}

{%- macro heading(id, text) -%}
<h2 id="{{ id }}">{{ text }}<a class="anchor" href="#{{ id }}">#</a></h2>
{%- endmacro %}
{%- macro figure(fig) -%}
<figure id="{{ fig.anchor }}">{% if fig.svg %}{{ fig.svg }}{% else %}<img src="data:image/png;base64,{{ fig.png }}" alt="{{ fig.title }}">{% endif %}<figcaption><strong>{{ fig.title }}.</strong> {{ fig.caption }}</figcaption></figure>
{%- endmacro %}
{%- macro explanation_list(explanations) -%}
<ul class="explanations">{% for e in explanations %}<li><strong>{{ e.name }}</strong> ({{ e.verdict }}): {{ e.reason }}{% if e.resolution %}<br>Resolution: {{ e.resolution }}{% endif %}{% if e.detail %}<br><span class="muted">{{ e.detail }}</span>{% endif %}</li>{% endfor %}</ul>
{%- endmacro %}
{%- macro kpi_table(kpis, symbols, sort_key) -%}
<label class="filter"><input type="checkbox" id="blocking-only"> blocking and guard KPIs only</label>
<div class="scroll"><table id="kpi-table" class="numbers-from-2">
<thead><tr>{% for column in kpis.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in kpis.rows %}{% set keys = kpis.sort_keys[loop.index0] %}<tr class="{{ kpis.row_classes[loop.index0] }}">
{%- for cell in row[:-1] %}{% set key = sort_key(keys[loop.index0]) %}<td{% if key %} data-sort="{{ key }}"{% endif %}>{{ cell }}</td>{% endfor -%}
<td data-sort="{{ sort_key(keys[-1]) }}"><span class="badge {{ row[-1] | replace('-', '_') }}">{{ symbols.get(row[-1], '') }} {{ row[-1] }}</span></td></tr>
{% endfor %}</tbody>
</table></div>
<p class="note">{{ kpis.note }}</p>
{%- endmacro %}

{#- the leaderboard's KPI table (reports/view.py KpiMatrix): the same id, filter and script as kpi_table #}
{%- macro kpi_matrix(matrix, symbols, sort_key) -%}
<label class="filter"><input type="checkbox" id="blocking-only"> blocking and guard KPIs only</label>
<div class="scroll"><table id="kpi-table" class="kpi-matrix">
<thead><tr><th>KPI</th><th>tier</th><th>margin</th><th>baseline</th>{% for name in matrix.candidates %}<th>{{ name }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in matrix.rows %}{% set keys = row.sort_keys %}<tr class="{{ row.tier }}">
{%- for cell in [row.label, row.tier, row.margin, row.baseline] %}{% set key = sort_key(keys[loop.index0]) %}<td{% if key %} data-sort="{{ key }}"{% endif %}>{{ cell }}</td>{% endfor -%}
{%- for text, verdict in row.cells %}{% set key = sort_key(keys[4 + loop.index0]) %}<td{% if key %} data-sort="{{ key }}"{% endif %}>{% if verdict %}<span class="badge {{ verdict | replace('-', '_') }}" title="{{ verdict }}">{{ symbols[verdict] }}</span> {% endif %}{{ text }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
<p class="note">{{ matrix.note }}</p>
{%- endmacro %}

{#- the title, contents, verdict banner and warnings that open every report #}
{%- macro top(title, banner, toc, symbols, problems, provenance_warnings, collapsed_lam_warnings) -%}
<h1>{{ title }}</h1>
<div class="context">{{ banner.context }}</div>
<nav class="toc" id="contents"><strong>Contents</strong>
<ol>{% for id, text in toc %}<li><a href="#{{ id }}">{{ text }}</a></li>{% endfor %}</ol>
</nav>

<section class="banner {{ banner.verdict | lower }}" id="verdict">
  <h2>{{ symbols[banner.verdict] }} {{ banner.verdict }}</h2>
  <ul>{% for reason in banner.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
  {% if banner.unresolved_guards %}<div class="guards">{{ banner.verdict }} · {{ banner.guards_line() }}</div>{% endif %}
  {% if banner.recommended_seeds %}<div class="recommend">Recommended: about {{ banner.recommended_seeds }} seeds per variant would settle it.</div>{% endif %}
</section>

{% if problems %}
<div class="alert"><strong>Runs that did not finish</strong>
<ul>{% for line in problems %}<li>{{ line }}</li>{% endfor %}</ul></div>
{% endif %}
{% if provenance_warnings %}
<div class="alert warn"><strong>Provenance warnings</strong>
<ul>{% for line in provenance_warnings %}<li>{{ line }}</li>{% endfor %}</ul></div>
{% endif %}
{% if collapsed_lam_warnings %}
<div class="alert warn"><strong>Collapsed LAM</strong>
<ul>{% for line in collapsed_lam_warnings %}<li>{{ line }}</li>{% endfor %}</ul></div>
{% endif %}
{%- endmacro %}
{#- compatibility, runs, provenance, the command and the notes that close every report #}
{%- macro variants_curves_rollouts(variants, curve_figures, rollout_figures, rollouts) -%}
{{ heading("variants", "Variants") }}
{% for variant in variants %}
<p><strong>{{ variant.role }}</strong>: {{ variant.name }}</p>
{% if variant.description %}<pre>{{ variant.description }}</pre>{% else %}<p class="muted">no description</p>{% endif %}
{% endfor %}

{{ heading("curves", "Training curves") }}
{% for fig in curve_figures %}
{{ figure(fig) }}
{% else %}<p class="muted">No training curves were recorded.</p>{% endfor %}

{{ heading("rollouts", "Rollouts") }}
{% for fig in rollout_figures %}
{{ figure(fig) }}
{% else %}<p class="muted">No rollout frames or scores were recorded.</p>{% endfor %}
{{ table(rollouts, 3) }}
{%- endmacro %}

{%- macro bottom(compat, symbols, run_counts, problem_runs, all_runs, provenance, reproduce_command, notes) -%}
{{ heading("compat", "Backward compatibility") }}
{% if compat is none %}<p class="muted">Not checked.</p>
{% else %}
<p class="{{ 'ok' if compat.ok else 'failed' }}">{{ symbols['PASS'] if compat.ok else symbols['FAIL'] }} {{ 'compatible' if compat.ok else 'INCOMPATIBLE' }}</p>
<ul>{% for line in compat.lines %}<li>{{ line }}</li>{% endfor %}</ul>
{% endif %}

{{ heading("runs", "Runs") }}
{% if run_counts.rows %}{{ table(run_counts, 2) }}{% else %}<p class="muted">No runs recorded.</p>{% endif %}
{% if problem_runs.rows %}<h3>Failed or diverged runs</h3>{{ table(problem_runs, 99) }}{% endif %}
{% if all_runs.rows %}<details><summary>All {{ all_runs.rows | length }} runs</summary>{{ table(all_runs, 99) }}</details>{% endif %}

{{ heading("provenance", "Provenance") }}
{% if provenance.rows %}{{ table(provenance, 99) }}{% else %}<p class="muted">No provenance recorded.</p>{% endif %}

{{ heading("reproduce", "Reproduce") }}
<pre class="command"><code>{{ reproduce_command }}</code></pre>

{% if notes %}
{{ heading("notes", "Notes") }}
<ul>{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>
{% endif %}
{%- endmacro %}
"""

IMPORTS = """{% extends "page" %}
{% from "macros" import table, heading, figure, kpi_table, kpi_matrix, explanation_list, top, variants_curves_rollouts, bottom %}
"""

# One candidate against the baseline.
HTML_TEMPLATE = IMPORTS + r"""{% block content %}
{{ top(title, banner, toc, symbols, problems, provenance_warnings, collapsed_lam_warnings) }}

{% if forest %}
{{ heading("forest", "Blocking and guard KPIs against their margins") }}
{{ figure(forest) }}
{% endif %}

{{ heading("kpis", "KPIs") }}
{% if kpis.rows %}
{{ kpi_table(kpis, symbols, sort_key) }}
{{ heading("explanations", "Why each KPI got its verdict") }}
{{ explanation_list(explanations) }}
{% else %}<p class="muted">No KPIs were compared.</p>{% endif %}

{{ heading("seeds", "Per-seed values") }}
{% if seeds.rows %}{{ table(seeds) }}{% else %}<p class="muted">No per-seed values.</p>{% endif %}

{{ variants_curves_rollouts(variants, curve_figures, rollout_figures, rollouts) }}

{{ heading("speed", "Speed") }}
{% if speed.rows %}{{ table(speed) }}{% else %}<p class="muted">No speed measurements.</p>{% endif %}

{{ bottom(compat, symbols, run_counts, problem_runs, all_runs, provenance, reproduce_command, notes) }}
{% endblock %}
"""

# Several candidates against the baseline (reports/leaderboard.py).
LEADERBOARD_TEMPLATE = IMPORTS + r"""{% block content %}
{{ top(title, banner, toc, symbols, problems, provenance_warnings, collapsed_lam_warnings) }}

{{ heading("leaderboard", "Leaderboard") }}
{{ table(leaderboard, 2, leaderboard.columns | length - 1) }}

{{ heading("arms", "Each arm's IQM") }}
{% if arms.rows %}{{ table(arms) }}{% else %}<p class="muted">No blocking or guard KPIs.</p>{% endif %}

{% if forest %}
{{ heading("forest", "Blocking and guard KPIs against their margins") }}
{{ figure(forest) }}
{% endif %}

{{ heading("kpis", "KPIs of every candidate") }}
{% if kpis.rows %}
{{ kpi_matrix(kpis, symbols, sort_key) }}
{{ heading("explanations", "Why each KPI got its verdict") }}
<p class="muted">The blocking and guard KPIs, which decide the verdict; the informational KPIs' changes are in the table above, and every KPI's reason is in report.json.</p>
{% for candidate in candidates %}
<details{% if candidate.decided %} open{% endif %}><summary>{{ symbols[candidate.verdict] }} {{ candidate.verdict }} · {{ candidate.name }}</summary>
<ul>{% for reason in candidate.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
{{ explanation_list(candidate.explanations) }}
</details>
{% endfor %}
{% else %}<p class="muted">No KPIs were compared.</p>{% endif %}

{{ variants_curves_rollouts(variants, curve_figures, rollout_figures, rollouts) }}

{{ heading("speed", "Speed") }}
{% for candidate in candidates %}{% if candidate.speed.rows %}<h3>{{ candidate.name }}</h3>{{ table(candidate.speed) }}{% endif %}
{% endfor %}

{{ bottom(compat, symbols, run_counts, problem_runs, all_runs, provenance, reproduce_command, notes) }}
{% endblock %}
"""

TEMPLATES = {"page": PAGE_TEMPLATE, "macros": MACROS_TEMPLATE, "report": HTML_TEMPLATE, "leaderboard": LEADERBOARD_TEMPLATE}
