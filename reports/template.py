"""The HTML report template (Jinja2, rendered with autoescape: every string is escaped).

Kept as a Python string rather than a .j2 file so it ships with the package without
package-data configuration.  The page is self-contained: inline CSS, images as data URIs,
no scripts, and a Content-Security-Policy that forbids loading anything else.
"""

HTML_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} — {{ banner.verdict }}</title>
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
  .recommend { font-weight: bold; margin-top: 8px; }
  .alert { border-left: 5px solid #cf222e; background: #ffebe9; padding: 8px 14px; margin: 10px 0; border-radius: 4px; }
  .alert.warn { border-color: #bf8700; background: #fff8c5; }
  .alert ul { margin: 4px 0; padding-left: 20px; }
  table { border-collapse: collapse; background: #fff; font-size: 13px; margin: 6px 0; }
  th, td { border: 1px solid #d0d7de; padding: 4px 7px; text-align: left; vertical-align: top; }
  th { background: #eaeef2; }
  td:first-child { white-space: nowrap; }
  td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
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
</style>
</head>
<body>
<main>
{%- macro table(t, numeric_from=1) -%}
{% if t.rows %}
<div class="scroll"><table>
<thead><tr>{% for column in t.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr class="{{ t.row_classes[loop.index0] if t.row_classes else '' }}">
{%- for cell in row %}<td{% if loop.index0 >= numeric_from %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
{% endif %}
{%- endmacro %}

<h1>{{ title }}</h1>
<div class="context">{{ banner.context }}</div>

<section class="banner {{ banner.verdict | lower }}">
  <h2>{{ symbols[banner.verdict] }} {{ banner.verdict }}</h2>
  <ul>{% for reason in banner.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
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

<h2>KPIs</h2>
{% if kpis.rows %}
<div class="scroll"><table>
<thead><tr>{% for column in kpis.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in kpis.rows %}<tr class="{{ kpis.row_classes[loop.index0] }}">
{%- for cell in row[:-1] %}<td{% if loop.index0 >= 2 %} class="num"{% endif %}>{{ cell }}</td>{% endfor -%}
<td><span class="badge {{ row[-1] | replace('-', '_') }}">{{ symbols.get(row[-1], '') }} {{ row[-1] }}</span></td></tr>
{% endfor %}</tbody>
</table></div>
<p class="note">{{ kpis.note }}</p>
<details><summary>Why each KPI got its verdict</summary>
<ul class="explanations">{% for e in explanations %}<li><strong>{{ e.name }}</strong> ({{ e.verdict }}): {{ e.reason }}<br><span class="muted">{{ e.detail }}</span></li>{% endfor %}</ul>
</details>
{% else %}<p class="muted">No KPIs were compared.</p>{% endif %}

<h2>Per-seed values</h2>
{% if seeds.rows %}{{ table(seeds) }}{% else %}<p class="muted">No per-seed values.</p>{% endif %}

<h2>Variants</h2>
{% for variant in variants %}
<p><strong>{{ variant.role }}</strong>: {{ variant.name }}</p>
{% if variant.description %}<pre>{{ variant.description }}</pre>{% else %}<p class="muted">no description</p>{% endif %}
{% endfor %}

<h2>Training curves</h2>
{% for fig in curve_figures %}
<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.title }}"><figcaption><strong>{{ fig.title }}.</strong> {{ fig.caption }}</figcaption></figure>
{% else %}<p class="muted">No training curves were recorded.</p>{% endfor %}

<h2>Rollouts</h2>
{% for fig in rollout_figures %}
<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.title }}"><figcaption><strong>{{ fig.title }}.</strong> {{ fig.caption }}</figcaption></figure>
{% else %}<p class="muted">No rollout frames or scores were recorded.</p>{% endfor %}
{{ table(rollouts, 3) }}

<h2>Speed</h2>
{% if speed.rows %}{{ table(speed) }}{% else %}<p class="muted">No speed measurements.</p>{% endif %}

<h2>Backward compatibility</h2>
{% if compat is none %}<p class="muted">Not checked.</p>
{% else %}
<p class="{{ 'ok' if compat.ok else 'failed' }}">{{ symbols['PASS'] if compat.ok else symbols['FAIL'] }} {{ 'compatible' if compat.ok else 'INCOMPATIBLE' }}</p>
<ul>{% for line in compat.lines %}<li>{{ line }}</li>{% endfor %}</ul>
{% endif %}

<h2>Runs</h2>
{% if run_counts.rows %}{{ table(run_counts, 2) }}{% else %}<p class="muted">No runs recorded.</p>{% endif %}
{% if problem_runs.rows %}<h3>Failed or diverged runs</h3>{{ table(problem_runs, 99) }}{% endif %}
{% if all_runs.rows %}<details><summary>All {{ all_runs.rows | length }} runs</summary>{{ table(all_runs, 99) }}</details>{% endif %}

<h2>Provenance</h2>
{% if provenance.rows %}{{ table(provenance, 99) }}{% else %}<p class="muted">No provenance recorded.</p>{% endif %}

<h2>Reproduce</h2>
<pre class="command"><code>{{ reproduce_command }}</code></pre>

{% if notes %}
<h2>Notes</h2>
<ul>{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>
{% endif %}
</main>
</body>
</html>
"""
