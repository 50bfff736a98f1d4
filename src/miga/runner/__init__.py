"""One runner for ``miga suite``, ``miga ablate`` and ``miga compare``: video jobs, each in its own resumable
run dir (:mod:`miga.runner.jobs`), made in-process or on Ray (:mod:`miga.runner.execute`), measured from the
files and tabulated (:mod:`miga.runner.table`). Layers: commands -> runner -> pipeline -> engine/backbones."""
