import { describe, expect, it } from 'vitest';
import { loadDevicePluginProto, loadPodResourcesProto } from '../../../deviceplugin/proto.js';

// Kubelet matches methods by their wire path; a typo in a package or service name breaks it.
describe('kubelet protos', () => {
  it('declare the wire paths kubelet uses', () => {
    const dp = loadDevicePluginProto().v1beta1;
    expect(dp.Registration.service.Register.path).toBe('/v1beta1.Registration/Register');
    expect(Object.values(dp.DevicePlugin.service).map((m) => m.path).sort()).toEqual([
      '/v1beta1.DevicePlugin/Allocate',
      '/v1beta1.DevicePlugin/GetDevicePluginOptions',
      '/v1beta1.DevicePlugin/GetPreferredAllocation',
      '/v1beta1.DevicePlugin/ListAndWatch',
      '/v1beta1.DevicePlugin/PreStartContainer',
    ]);
    expect(dp.DevicePlugin.service.ListAndWatch.responseStream).toBe(true);
    const pr = loadPodResourcesProto().v1;
    expect(pr.PodResourcesLister.service.List.path).toBe('/v1.PodResourcesLister/List');
  });

  it('encodes devices_ids under field 1, as kubelet sends it', () => {
    const req = loadDevicePluginProto().v1beta1.DevicePlugin.service.PreStartContainer;
    const bytes = req.requestSerialize({ devices_ids: ['slot-01'] });
    // tag (1 << 3 | 2 = 0x0a), length 7, "slot-01"
    expect([...bytes]).toEqual([0x0a, 7, ...Buffer.from('slot-01')]);
    expect(req.requestDeserialize(bytes)).toEqual({ devices_ids: ['slot-01'] });
  });
});
