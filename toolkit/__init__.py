"""The shared toolkit, below every other package: errors and closest-match suggestions (`errors`), fields that
declare their allowed values and metadata (`fields`), the command-line runner (`cli`), field docs read from the
source (`docs`) and files (`files`: atomic writes, content hashes, the cache folder). It imports nothing of the
project and nothing heavy (no torch, mlflow or hydra).
"""
