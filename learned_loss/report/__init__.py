"""Reports: the comparison's report.md / report.html (render) and the sections of
the studies (studies)."""
