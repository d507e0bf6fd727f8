"""Process isolation: a function worker in its own worker process (`parent`: the serving process's
side, `child`: the worker process's, `channel` and `frames`: what travels between them).
"""
