"""The engine: every run of an experiment (folds x seeds x sweep points) as one compiled program.

Data flows one way through its modules:

  setup       files -> windows (`jkd.data`) -> fold indices -> the runs (`runs`) on the devices
              (`parallel`), the model, the frozen teachers (`teachers`), the programs
  train       the typed step (`Step`: state, data, run, batch, clock) and the epoch and evaluation
              programs vmapped over the runs axis; `state`, `optim`, `augment` are its parts
  loop        epochs, evaluation, best variables, checkpoints (`checkpoint`), metrics.jsonl
              (`metrics`), TensorBoard (`tensorboard`) -> results.json (`results`, `provenance`)
  workdir     what may be written where, checked before anything is (`jkd.preflight`)
"""
