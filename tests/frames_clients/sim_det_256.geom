; CrystFEL 0.12 geometry for databus.sim.SimDetector(shape=(256, 256)): one panel, frames
; received over 0MQ as msgpack maps from `databus bridge frames --rep`. sim_det has no pixel
; size: 75 um pixels are assumed; the beam hits the middle of the frame.

photon_energy = beam_energy eV
clen = detector_distance mm
adu_per_photon = 1
res = 13333.3

sim_det/data = detector_data
sim_det/min_fs = 0
sim_det/max_fs = 255
sim_det/min_ss = 0
sim_det/max_ss = 255
sim_det/corner_x = -128
sim_det/corner_y = -128
sim_det/fs = x
sim_det/ss = y
