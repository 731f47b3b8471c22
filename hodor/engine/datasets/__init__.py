"""Dataset mode of ``hodor-run``: a DAVIS or YouTube-VOS root, or a list of videos, segmented
sequence by sequence with one model load, in this process or over Ray workers.

- :mod:`.layouts` recognises a dataset and lists its sequences (:mod:`.davis`,
  :mod:`.youtube_vos`, :mod:`.video_list`), each a :class:`.sequence.SequenceSpec`;
- :mod:`.segment` segments one sequence into ``OUT/<seq>/``, staged and committed whole by
  :mod:`hodor.engine.io.staging` with the record :mod:`.record` reads back (``--resume``);
- :mod:`.runner` runs the sequences here, :mod:`.ray_runner` on Ray;
- :mod:`.summary` writes ``summary.csv``/``summary.json``; :mod:`.youtube_zip` the
  YouTube-VOS ``Annotations.zip``; :mod:`.cli` is the command line.
"""
