"""Cell calibration: camera intrinsics and distortion from a ChArUco board, the camera's mounting
on the flange (hand-eye) and the board's pose on the table, and the calibration file.

`views` plans the robot poses, `capture` drives the cell through them, `detect` finds the board,
`solve` computes the calibration, `store` writes and reads `calibration/cell-<name>.yaml` and
gives the cell's camera model (`camera_model`), `printout` writes the board as a PDF.
"""
