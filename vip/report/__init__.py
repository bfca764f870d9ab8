"""The run report: one self-contained HTML file (and a Markdown copy) drawn from a run directory's files.

    python jobs/report.py runs/<name>        # -> runs/<name>/report.html, report.md, report_files/
    vip.report.build.write_report(run_dir)   # the same, from code (e.g. at the end of each stage)

Nothing here loads a model: every number and figure comes from the JSON files the steps write.
"""
