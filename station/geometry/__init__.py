"""The cell's geometry, pure maths on numpy and OpenCV: UR poses (`ur_poses`), the calibration
board (`charuco`), each shot's optics and the region's coverage (`coverage`), the pose raster
(`pose_plan`), cutting shots into detector tiles (`tiling`), the sheet map that fuses the shots'
anomaly maps on the sheet (`sheet_map`), and where the sheet lies (`placement`).
"""
