"""Plain-Python helpers of the AmyloidKD Slicer module (no Slicer import).

``runner`` builds and runs the prediction CLI in a background process and reads its output;
``dependencies`` decides which Python packages Slicer still needs without replacing any
it ships; ``batch`` parses the headless batch script's arguments and lists its cases.
They live in a sub-package because Slicer treats every top-level ``.py`` file in a module
folder as a module of its own.
"""
