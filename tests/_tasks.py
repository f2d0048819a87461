"""Shared by the tests of minimoe.tasks: one arithmetic and one countdown task of each kind."""

from minimoe.tasks import ArithmeticTask, CountdownTask

TASK_IDS = ["arithmetic-1-3", "arithmetic-2-5-negative", "countdown-3", "countdown-4-division"]
TASKS = [ArithmeticTask(min_digits=1, max_digits=3), ArithmeticTask(min_digits=2, max_digits=5, allow_negative=True),
         CountdownTask(), CountdownTask(n_numbers=4, max_number=20, operators="+-*/", use_all=True)]
